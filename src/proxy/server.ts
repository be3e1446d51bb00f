/**
 * The public listener: reads the credential and the client IP, asks the policy
 * for a decision, then forwards (HTTP or upgrade) or answers with the JSON of
 * SPEC §4. Nothing else decides.
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import type { Duplex, Readable } from "node:stream";
import type { Logger } from "pino";
import type { Config } from "../config/config.js";
import type { Metrics, RequestOutcome } from "../metrics/metrics.js";
import type { SourceTracker } from "../metrics/sources.js";
import { limitKey } from "../ip/address.js";
import { compilePlaces } from "../policy/credential.js";
import { enforce, ipPathOf, type EnforceSettings, type Enforcement } from "../policy/enforce.js";
import type { KeyStore } from "../store/store.js";
import { createLimitedServer, forwardedFor, hasBody, InFlight, listenOn, requestIdOf } from "../util/http.js";
import { Forwarder, UPSTREAM_CONNECTIONS, type ForwardResult, type Identity } from "./forward.js";
import { answer, answerPlanned, answerPlanOnSocket, answerSocket } from "./respond.js";
import { perProcess, type Limits } from "../config/limits.js";
import type { LimitKind } from "../metrics/metrics.js";
import { readBody } from "./body.js";
import { ConnectionGate, proxyProtocolPrelude } from "../net/connections.js";
import { ClientSlots, closeWhenIdle, LimitLog, UpstreamGate } from "./limits.js";
import { ACCESS_LINE, DecisionRecorder } from "../metrics/denials.js";
import { pipeUpgrade, type Cuttable } from "./upgrade.js";

/** What the proxy listener needs. */
export interface ProxyDeps {
  readonly config: Config;
  readonly store: KeyStore;
  readonly metrics: Metrics;
  readonly sources: SourceTracker;
  readonly log: Logger;
}

/** The public proxy listener. */
export class ProxyServer {
  readonly server: Server;
  private readonly forwarder: Forwarder;
  /** The forwarder to `sandbox_upstream`, when one is configured (SPEC §9). */
  private readonly sandboxForwarder: Forwarder | undefined;
  private readonly upgraded = new Set<Cuttable | Duplex>();
  private readonly settings: EnforceSettings;
  private readonly inflight = new InFlight();
  private readonly recorder: DecisionRecorder;
  /** This process's share of `limits` (all of it unless in a cluster). */
  private readonly limits: Limits;
  private readonly limitLog: LimitLog;
  private readonly slots: ClientSlots;
  private readonly upstreamGate: UpstreamGate;
  /** Connection caps in front of HTTP. */
  readonly connections: ConnectionGate;

  constructor(private readonly deps: ProxyDeps) {
    const c = deps.config;
    this.settings = {
      mode: c.mode,
      unknown: c.keys.unknown,
      missing: c.keys.missing,
      trust: c.trustedProxies,
      pingPath: c.pingPath,
      ipPath: ipPathOf(c.pingPath),
      places: compilePlaces(c.keys.credentials),
      routes: c.routeScopes,
    };
    deps.metrics.countInflightWith(() => this.inflight.size);
    this.recorder = new DecisionRecorder(deps.metrics, deps.sources, deps.log, undefined);
    this.forwarder = new Forwarder({ upstream: c.upstream, timeoutMs: c.upstreamTimeoutMs });
    this.sandboxForwarder =
      c.sandboxUpstream === undefined
        ? undefined
        : new Forwarder({ upstream: c.sandboxUpstream, timeoutMs: c.upstreamTimeoutMs });
    // A request without Host reaches the handler, to get keyfence's JSON 400 rather than Node's bare one.
    this.server = createLimitedServer({ requireHostHeader: false });
    this.server.on("request", (req: IncomingMessage, res: ServerResponse) => this.handle(req, res));
    this.server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) =>
      this.handleUpgrade(req, socket, head),
    );
    this.server.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => clientError(err, socket));
    this.limits = perProcess(c.limits, c.workers);
    this.limitLog = new LimitLog(deps.log);
    this.slots = new ClientSlots(this.limits.inflightPerClient);
    this.upstreamGate = new UpstreamGate(UPSTREAM_CONNECTIONS, this.limits.queueMs);
    this.connections = new ConnectionGate(this.server, {
      connections: this.limits.connections,
      connectionsPerPeer: this.limits.connectionsPerPeer,
      ipv6Prefix: this.limits.ipv6Prefix,
      refused: (why, peer) => this.limited(why, peer),
      prelude: proxyProtocolPrelude(c.proxyProtocol, deps.log),
    });
    deps.metrics.countConnectionsWith(() => this.connections.connections);
  }

  /** Counts and logs (once per client per interval) something a limit refused or cut. */
  private limited(limit: LimitKind, client: string): void {
    this.deps.metrics.limited(limit);
    this.limitLog.hit(limit, client);
  }

  /** Starts listening; resolves with the bound address. */
  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return listenOn(this.server, host, port);
  }

  /**
   * Stops accepting, lets in-flight requests finish for up to `timeoutMs`,
   * then cuts what remains (upgraded connections included).
   */
  async drain(timeoutMs: number): Promise<{ cut: number }> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const settled = await this.inflight.idleWithin(timeoutMs);
    const cut = settled ? this.upgraded.size : this.inflight.size + this.upgraded.size;
    for (const s of this.upgraded) s.destroy();
    this.server.closeAllConnections();
    await closed;
    await this.forwarder.destroy();
    await this.sandboxForwarder?.destroy();
    return { cut };
  }

  /** Runs the enforcement step on `req`; counts, logs and remembers the decision. */
  private enforce(req: IncomingMessage, requestId: string, t0: number): Enforcement {
    const e = enforce(
      {
        method: req.method,
        rawHeaders: req.rawHeaders,
        url: req.url,
        peer: req.socket.remoteAddress,
        forwardedFor: forwardedFor(req),
        httpVersion: req.httpVersion,
      },
      this.deps.store.snapshot,
      this.settings,
    );
    this.recorder.record(e, req.method, requestId, t0);
    return e;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const t0 = performance.now();
    this.inflight.begin();
    const requestId = requestIdOf(req);
    const e = this.enforce(req, requestId, t0);
    const plan = e.plan;
    if (plan.kind === "answer" || e.target === undefined) {
      if (plan.kind === "answer") answerPlanned(res, plan, requestId);
      else res.destroy();
      this.completed(req, res.statusCode, t0, requestId, "answered", e);
      return;
    }
    this.forward(req, res, e, e.target, requestId, t0);
  }

  /**
   * Forwards an allowed request within the limits: a slot of its client
   * (else 429), its body read first when small (a stalled one: 408), then an
   * upstream connection within `queue_ms` (else 503).
   */
  private forward(
    req: IncomingMessage,
    res: ServerResponse,
    e: Enforcement,
    target: string,
    requestId: string,
    t0: number,
  ): void {
    const client = e.decision.client.text;
    // Slots are counted per address, an IPv6 client per its network (limits.ipv6_prefix, see limitKey).
    const slot = limitKey(client, e.decision.client.ip, this.limits.ipv6Prefix);
    if (!this.slots.take(slot)) {
      this.limited("inflight_per_client", client);
      answer(res, "too_many_requests", { requestId });
      this.completed(req, res.statusCode, t0, requestId, "answered", e);
      return;
    }
    const answered = (limit: LimitKind, reason: "upstream_busy" | "body_timeout"): void => {
      this.slots.give(slot);
      this.limited(limit, client);
      answer(res, reason, { requestId });
      this.completed(req, res.statusCode, t0, requestId, "answered", e);
    };
    const done = (result: ForwardResult): void => {
      this.upstreamGate.release();
      this.slots.give(slot);
      let outcome: RequestOutcome = "forwarded";
      if (result === "aborted") outcome = "aborted";
      else if (result === "body_idle") {
        outcome = "answered";
        this.limited("body_idle", client);
      } else if (result !== "ok") {
        outcome = "upstream_error";
        this.deps.metrics.upstreamError(result);
        this.deps.log.error(
          { event: "upstream_error", request_id: requestId, kind: result, method: req.method, path: e.path },
          "upstream request failed",
        );
      }
      this.completed(req, res.statusCode, t0, requestId, outcome, e);
    };
    const send = (body: Buffer | Readable | undefined): void => {
      let gone: (() => void) | undefined;
      const withdraw = this.upstreamGate.acquire(
        () => {
          if (gone !== undefined) res.off("close", gone);
          this.forwarderFor(e).forward(req, res, e.decision.client, target, requestId, done, body, this.identity(e));
        },
        () => {
          if (gone !== undefined) res.off("close", gone);
          answered("queue", "upstream_busy");
        },
      );
      if (withdraw !== undefined) {
        // The client left while waiting: its place in the queue goes to the next one.
        gone = () => {
          withdraw();
          this.slots.give(slot);
          this.completed(req, res.statusCode, t0, requestId, "aborted", e);
        };
        res.once("close", gone);
      }
    };
    if (!hasBody(req.headers)) {
      send(undefined);
      return;
    }
    readBody(req, this.limits.bufferBodyBytes, this.limits.bodyIdleMs, (start) => {
      if (start.kind === "idle") answered("body_idle", "body_timeout");
      else if (start.kind === "aborted") {
        this.slots.give(slot);
        this.completed(req, res.statusCode, t0, requestId, "aborted", e);
      } else send(start.body);
    });
  }

  /** The forwarder for `e`: the sandbox one for a sandbox key when `sandbox_upstream` is set. */
  private forwarderFor(e: Enforcement): Forwarder {
    return e.decision.key?.sandbox === true && this.sandboxForwarder !== undefined
      ? this.sandboxForwarder
      : this.forwarder;
  }

  /** The identity sent upstream for `e`: with `forward_identity` and a known key only. */
  private identity(e: Enforcement): Identity | undefined {
    const key = e.decision.key;
    if (!this.deps.config.forwardIdentity || key === undefined) return undefined;
    return { keyId: key.id, scopes: key.scopes.join(" "), sandbox: key.sandbox };
  }

  /** Accounts for a request once keyfence has written its answer, the forwarder has finished or an upgrade handshake has ended (once per request). */
  private completed(
    req: IncomingMessage,
    status: number,
    t0: number,
    requestId: string,
    outcome: RequestOutcome,
    e: Enforcement,
  ): void {
    const seconds = (performance.now() - t0) / 1000;
    this.deps.metrics.request(outcome, seconds);
    if (this.deps.config.accessLog) {
      const decision = e.decision;
      ACCESS_LINE.write(this.deps.log, {
        event: "access",
        request_id: requestId,
        method: req.method,
        path: e.path,
        status,
        outcome,
        decision: e.decided ? decision.outcome : undefined,
        key_id: decision.keyId,
        client_ip: decision.client.text,
        duration_ms: Math.round(seconds * 1e6) / 1000,
        listener: undefined,
      });
    }
    this.inflight.end();
  }

  /** An upgrade request: decided by the same step; a tunnel only after the upstream's 101 (see upgrade.ts). */
  private handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    // Node hands the socket over without its own 'error' listener: a client's reset, unheard, would end the process.
    socket.on("error", () => socket.destroy());
    const t0 = performance.now();
    this.inflight.begin();
    const requestId = requestIdOf(req);
    const e = this.enforce(req, requestId, t0);
    const plan = e.plan;
    if (plan.kind === "answer" || e.target === undefined) {
      if (plan.kind === "answer") answerPlanOnSocket(socket, plan, requestId);
      else socket.destroy();
      this.completed(req, plan.kind === "answer" ? plan.status : 0, t0, requestId, "answered", e);
      return;
    }
    this.upgraded.add(socket);
    const forwarder = this.forwarderFor(e);
    const up = pipeUpgrade(
      req,
      socket,
      head,
      e.decision.client,
      e.target,
      requestId,
      {
        upstream: forwarder.upstream,
        prefix: forwarder.pathPrefix,
        timeoutMs: this.deps.config.upstreamTimeoutMs,
        identity: this.identity(e),
      },
      ({ result, status }) => {
        let outcome: RequestOutcome = "forwarded";
        if (result === "aborted") outcome = "aborted";
        else if (result === "body_idle") outcome = "answered";
        else if (result !== "ok") {
          outcome = "upstream_error";
          this.deps.metrics.upstreamError(result);
          this.deps.log.error(
            { event: "upstream_error", request_id: requestId, kind: result, method: req.method, path: e.path },
            "upstream request failed",
          );
        }
        this.completed(req, status, t0, requestId, outcome, e);
      },
    );
    this.upgraded.add(up);
    closeWhenIdle(socket, up, this.limits.tunnelIdleMs, () => this.limited("tunnel_idle", e.decision.client.text));
    socket.once("close", () => {
      this.upgraded.delete(socket);
      this.upgraded.delete(up);
    });
  }
}

/** Answers malformed HTTP with JSON where the socket still allows it; never throws. */
function clientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (!socket.writable || err.code === "ECONNRESET") {
    socket.destroy();
    return;
  }
  if (err.code === "HPE_HEADER_OVERFLOW") {
    answerSocket(socket, 431, "bad_request", "request headers too large", "Request Header Fields Too Large");
  } else if (err.code === "ERR_HTTP_REQUEST_TIMEOUT") {
    answerSocket(socket, 408, "bad_request", "request timed out", "Request Timeout");
  } else {
    answerSocket(socket, 400, "bad_request", "malformed HTTP request", "Bad Request");
  }
}
