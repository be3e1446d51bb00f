/**
 * The decision listener (SPEC §8): an existing ingress (nginx `auth_request`,
 * Traefik `forwardAuth`, Caddy `forward_auth`, Envoy `ext_authz`) asks it about
 * each request it holds; keyfence decides the original request exactly as the
 * proxy would and answers 200 (go on) or the proxy's own rejection. Nothing is
 * ever forwarded and no request body is ever read.
 */
import { ACCESS_LINE, DecisionRecorder } from "../metrics/denials.js";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import type { Logger } from "pino";
import { peerOf, resolveFromPeer, type Peer } from "../clientip/resolve.js";
import type { Config } from "../config/config.js";
import type { Metrics } from "../metrics/metrics.js";
import type { SourceTracker } from "../metrics/sources.js";
import { compilePlaces } from "../policy/credential.js";
import type { Decision } from "../policy/decide.js";
import { badRequest, enforceFor, ipPathOf, type StepSettings } from "../policy/enforce.js";
import type { KeyStore } from "../store/store.js";
import {
  forwardedFor,
  hasBody,
  InFlight,
  isToken,
  listenOn,
  requestIdOf,
  sendJson,
  createLimitedServer,
} from "../util/http.js";

/** What the decision listener needs: the same parts as the proxy's, so decisions count, log and observe alike. */
export interface DecisionDeps {
  readonly config: Config;
  readonly store: KeyStore;
  readonly metrics: Metrics;
  readonly sources: SourceTracker;
  readonly log: Logger;
}

/** The original request as the ingress describes it. */
export interface OriginalRequest {
  readonly method: string;
  /** The request target as the client sent it (the enforcement step reads it as the proxy reads `req.url`). */
  readonly url: string | undefined;
  /** Why the description cannot be trusted (two that differ, a method that is no method): the question is refused. */
  readonly conflict?: string;
}

/**
 * The one value two header families give (`a` from the ingress's own pair,
 * `b` from the other): a client can add the pair its ingress does not set, so
 * two that differ are a conflict, never a choice.
 */
function agreed(
  a: string | undefined,
  b: string | undefined,
  same: (x: string, y: string) => boolean,
): { value: string | undefined; differ: boolean } {
  if (a === undefined) return { value: b, differ: false };
  return { value: a, differ: b !== undefined && !same(a, b) };
}

/** A header's single value; repeated or absent headers give undefined. */
function single(v: string | string[] | undefined): string | undefined {
  return typeof v === "string" ? v : undefined;
}

/**
 * The method and target of the request the ingress asks about: from
 * `X-Forwarded-Method`/`X-Forwarded-Uri` (Traefik, Caddy) or
 * `X-Original-Method`/`X-Original-URI` (nginx) when the peer is a trusted
 * proxy, else (an ingress that sends the original request line, as Envoy's
 * `ext_authz` does, or a peer whose headers count for nothing) the request's own.
 */
export function originalRequest(req: IncomingMessage, peerTrusted: boolean): OriginalRequest {
  const own = { method: req.method ?? "GET", url: req.url };
  if (!peerTrusted) return own;
  const h = req.headers;
  const method = agreed(
    single(h["x-forwarded-method"]),
    single(h["x-original-method"]),
    (x, y) => x.toUpperCase() === y.toUpperCase(),
  );
  const uri = agreed(single(h["x-forwarded-uri"]), single(h["x-original-uri"]), (x, y) => x === y);
  const out = { method: method.value ?? own.method, url: uri.value ?? own.url };
  if (method.differ) return { ...out, conflict: "X-Forwarded-Method and X-Original-Method differ" };
  if (uri.differ) return { ...out, conflict: "X-Forwarded-Uri and X-Original-URI differ" };
  if (!isToken(out.method)) return { ...out, conflict: "the original method is not an HTTP method" };
  return out;
}

/** Header values must be printable ASCII; messages are, but a client-chosen part never breaks the answer. */
function headerSafe(s: string): string {
  return /^[\x20-\x7e]*$/.test(s) ? s : s.replace(/[^\x20-\x7e]/g, "?");
}

const MALFORMED_BODY = '{"message":"malformed HTTP request"}';
const MALFORMED =
  "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n" +
  "X-Keyfence-Reason: bad_request\r\nX-Keyfence-Message: malformed HTTP request\r\n" +
  `Content-Length: ${MALFORMED_BODY.length}\r\nConnection: close\r\n\r\n${MALFORMED_BODY}`;

/** The decision listener. */
export class DecisionServer {
  readonly server: Server;
  private readonly settings: StepSettings;
  /** Metrics, observed sources and denial lines, as on the proxy listener. */
  private readonly recorder: DecisionRecorder;
  private readonly inflight = new InFlight();
  /** Each connection's peer, read at its first question: an ingress asks many over one kept-alive connection. */
  private readonly peers = new WeakMap<Socket, Peer>();

  constructor(private readonly deps: DecisionDeps) {
    this.recorder = new DecisionRecorder(deps.metrics, deps.sources, deps.log, "decision");
    const c = deps.config;
    this.settings = {
      mode: c.mode,
      unknown: c.keys.unknown,
      missing: c.keys.missing,
      pingPath: c.pingPath,
      ipPath: ipPathOf(c.pingPath),
      places: compilePlaces(c.keys.credentials),
      routes: c.routeScopes,
    };
    deps.metrics.countInflightWith(() => this.inflight.size);
    this.server = createLimitedServer();
    this.server.on("request", (req: IncomingMessage, res: ServerResponse) => this.handle(req, res));
    // No "upgrade" listener: Node then hands Upgrade requests to the request handler, so
    // they are asked about like any other and answered with a plain response, never a tunnel.
    this.server.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => {
      if (!socket.writable || err.code === "ECONNRESET") socket.destroy();
      else socket.end(MALFORMED);
    });
  }

  /** Starts listening; resolves with the bound address. */
  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return listenOn(this.server, host, port);
  }

  /** Stops accepting, lets in-flight questions finish for up to `timeoutMs`, then closes every connection. */
  async drain(timeoutMs: number): Promise<{ cut: number }> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const settled = await this.inflight.idleWithin(timeoutMs);
    const cut = settled ? 0 : this.inflight.size;
    this.server.closeAllConnections();
    await closed;
    return { cut };
  }

  /** The peer of `socket`, read once per connection. */
  private peerOf(socket: Socket): Peer {
    let peer = this.peers.get(socket);
    if (peer === undefined) {
      peer = peerOf(socket.remoteAddress, this.deps.config.trustedProxies);
      this.peers.set(socket, peer);
    }
    return peer;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const t0 = performance.now();
    this.inflight.begin();
    // Made only when something carries it (a refusal, a log line): an allowed answer has no body to explain.
    let id: string | undefined;
    const requestId = (): string => (id ??= requestIdOf(req));
    const client = resolveFromPeer(this.peerOf(req.socket), forwardedFor(req), this.deps.config.trustedProxies);
    const original = originalRequest(req, client.peerTrusted);
    // A body sent along (Traefik's forwardBody, Envoy's with_request_body) is never read: once answered, the connection closes.
    if (!req.complete && hasBody(req.headers)) res.shouldKeepAlive = false;
    const e =
      original.conflict === undefined
        ? enforceFor(req.rawHeaders, original.url, client, this.deps.store.snapshot, this.settings, original.method)
        : badRequest(original.url, client, this.settings, original.conflict);
    const decision: Decision = e.decision;
    this.recorder.record(e, original.method, requestId, t0);
    if (e.plan.kind === "forward") {
      const headers: Record<string, string | number> = { "content-length": 0 };
      const key = decision.key;
      if (key !== undefined) {
        // The identity is always there for the ingress to route by (sandbox) or pass on (SPEC §9).
        headers["x-keyfence-key-id"] = key.id;
        headers["x-keyfence-key-scopes"] = key.scopes.join(" ");
        headers["x-keyfence-sandbox"] = key.sandbox ? "true" : "false";
      } else {
        // An allow of no key (keys.missing or keys.unknown: forward) is never an ingress cache's to keep: it
        // vouches for no credential, yet a request built to share its cache key would ride it (README "Caching decisions").
        headers["cache-control"] = "no-store";
      }
      res.writeHead(200, headers);
      res.end();
    } else {
      const plan = e.plan;
      const headers: Record<string, string> = {
        "x-keyfence-reason": plan.reason,
        "x-keyfence-message": headerSafe(plan.message),
        "x-request-id": requestId(),
      };
      if (plan.status === 401) headers["www-authenticate"] = 'Bearer realm="keyfence"';
      if (decision.keyId !== undefined) headers["x-keyfence-key-id"] = decision.keyId;
      sendJson(res, plan.status, plan.body ?? { message: plan.message }, headers);
    }
    const seconds = (performance.now() - t0) / 1000;
    this.deps.metrics.request("answered", seconds);
    if (this.deps.config.accessLog) {
      ACCESS_LINE.write(this.deps.log, {
        event: "access",
        request_id: requestId(),
        method: original.method,
        path: e.path,
        status: res.statusCode,
        outcome: "answered",
        decision: e.decided ? decision.outcome : undefined,
        key_id: decision.keyId,
        client_ip: client.text,
        duration_ms: Math.round(seconds * 1e6) / 1000,
        listener: "decision",
      });
    }
    this.inflight.end();
  }
}
