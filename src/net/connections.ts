/**
 * What happens to a connection before HTTP sees it: the connection caps of
 * SPEC §4 (in total and per peer address) and, where configured, the PROXY
 * protocol header of SPEC §7 that names the real peer. Any node:http server
 * can be guarded this way (the proxy listener, the decision listener).
 */
import type { Server } from "node:http";
import type { Socket } from "node:net";
import type { Logger } from "pino";
import type { CompiledTrust } from "../clientip/resolve.js";
import { limitKey, parseIp } from "../ip/address.js";
import { PROXY_HEADER_TIMEOUT_MS, readProxyHeader } from "./proxyprotocol.js";

/** Why the gate closed a connection. */
export type Refusal = "connections" | "connections_per_peer";

/**
 * Reads what comes before HTTP on a connection (the PROXY protocol header):
 * calls `proceed` with the peer address to use, or closes the socket itself.
 */
export type Prelude = (socket: Socket, proceed: (peer: string) => void) => void;

/** How a server's connections are admitted. */
export interface GateOptions {
  /** Most connections open at once. */
  readonly connections: number;
  /** Most connections open at once from one peer address. */
  readonly connectionsPerPeer: number;
  /** An IPv6 peer counts as its network of this prefix length (see {@link limitKey}); 64 when absent. */
  readonly ipv6Prefix?: number;
  /** Told of every connection closed by a cap, with the peer address it counted against. */
  readonly refused: (why: Refusal, peer: string) => void;
  /** For sockets it returns true for, runs before HTTP and may name another peer (PROXY protocol). */
  readonly prelude?: { readonly applies: (socketPeer: string) => boolean; readonly run: Prelude };
}

/**
 * Puts a gate in front of `server`'s HTTP connection handling: over a cap,
 * the new connection is closed at once without an answer (as HAProxy's
 * `maxconn`, Envoy's connection limit and Node's `maxConnections` do; a 503
 * would first cost the very request parsing the cap is there to spare).
 */
export class ConnectionGate {
  private open = 0;
  private readonly perPeer = new Map<string, number>();

  constructor(
    server: Server,
    private readonly options: GateOptions,
  ) {
    // node:http handles a connection in its own 'connection' listener; run it
    // only for the connections the gate admits.
    const http = server.listeners("connection") as Array<(socket: Socket) => void>;
    server.removeAllListeners("connection");
    const admit = (socket: Socket): void => {
      for (const l of http) l.call(server, socket);
    };
    server.on("connection", (socket: Socket) => this.accept(socket, admit));
  }

  /** Connections open now (admitted or reading their PROXY header). */
  get connections(): number {
    return this.open;
  }

  /** Connections open now from `peer` (an IPv6 peer: from its network, see {@link GateOptions.ipv6Prefix}). */
  fromPeer(peer: string): number {
    return this.perPeer.get(limitKey(peer, undefined, this.options.ipv6Prefix)) ?? 0;
  }

  private accept(socket: Socket, admit: (socket: Socket) => void): void {
    const socketPeer = socket.remoteAddress ?? "";
    if (this.open >= this.options.connections) {
      socket.destroy();
      this.options.refused("connections", socketPeer);
      return;
    }
    this.open++;
    socket.once("close", () => this.open--);
    const prelude = this.options.prelude;
    if (prelude !== undefined && prelude.applies(socketPeer)) {
      prelude.run(socket, (peer) => this.admitPeer(socket, peer, admit));
    } else this.admitPeer(socket, socketPeer, admit);
  }

  private admitPeer(socket: Socket, peer: string, admit: (socket: Socket) => void): void {
    if (socket.destroyed) return;
    const key = limitKey(peer, undefined, this.options.ipv6Prefix);
    const n = this.perPeer.get(key) ?? 0;
    if (n >= this.options.connectionsPerPeer) {
      socket.destroy();
      this.options.refused("connections_per_peer", peer);
      return;
    }
    this.perPeer.set(key, n + 1);
    socket.once("close", () => {
      const left = (this.perPeer.get(key) ?? 1) - 1;
      if (left <= 0) this.perPeer.delete(key);
      else this.perPeer.set(key, left);
    });
    admit(socket);
  }
}

/**
 * The prelude for the peers listed in `proxy_protocol` (SPEC §7), or
 * undefined when none is: their connections must start with a PROXY header,
 * whose failures are logged (a misconfigured balancer shows at once).
 */
export function proxyProtocolPrelude(peers: CompiledTrust, log: Logger): GateOptions["prelude"] {
  if (peers.none) return undefined;
  let last = "";
  let lastAt = 0;
  return {
    applies: (socketPeer) => peers.trust(parseIp(socketPeer), 0),
    run: (socket, proceed) => {
      const peer = socket.remoteAddress ?? "";
      readProxyHeader(socket, PROXY_HEADER_TIMEOUT_MS, proceed, (why, reason) => {
        // One line per peer and kind a second at most: a port scanner must not flood the log.
        const now = Date.now();
        if (`${peer} ${why}` === last && now - lastAt < 1000) return;
        last = `${peer} ${why}`;
        lastAt = now;
        log.warn({ event: "proxy_protocol_error", peer_ip: peer, kind: why }, `connection closed: ${reason}`);
      });
    },
  };
}
