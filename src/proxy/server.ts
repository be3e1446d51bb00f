/**
 * The public listener: reads the credential and the client IP, asks the policy
 * for a decision, then forwards (HTTP or upgrade) or answers with the JSON of
 * SPEC §4. Nothing else decides.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import type { Duplex, Readable } from "node:stream";
import type { Logger } from "pino";
import { resolveClientIp } from "../clientip/resolve.js";
import type { Config } from "../config/config.js";
import type { Metrics, RequestOutcome } from "../metrics/metrics.js";
import type { SourceTracker } from "../metrics/sources.js";
import { readBearer } from "../policy/credential.js";
import { decide, type Credential, type Decision } from "../policy/decide.js";
import type { KeyStore } from "../store/store.js";
import { forwardedFor, listenOn, SERVER_LIMITS } from "../util/http.js";
import { Forwarder, UPSTREAM_CONNECTIONS, type ForwardResult } from "./forward.js";
import { messageOf, statusOf, type AnswerReason } from "../policy/answers.js";
import { answer, answerSocket, hasBody } from "./respond.js";
import { perProcess, type Limits } from "../config/limits.js";
import type { LimitKind } from "../metrics/metrics.js";
import { readBody } from "./body.js";
import { ConnectionGate, proxyProtocolPrelude } from "../net/connections.js";
import { ClientSlots, closeWhenIdle, LimitLog, UpstreamGate } from "./limits.js";
import { pipeUpgrade } from "./upgrade.js";
import { LineFormat } from "../util/logline.js";
import { randomUuid } from "../util/uuid.js";

/** What the proxy listener needs. */
export interface ProxyDeps {
  readonly config: Config;
  readonly store: KeyStore;
  readonly metrics: Metrics;
  readonly sources: SourceTracker;
  readonly log: Logger;
}

const DENIAL_FIELDS = [
  "event",
  "request_id",
  "reason",
  "key_id",
  "client_ip",
  "peer_ip",
  "method",
  "path",
  "mode",
] as const;
const DENIED_LINE = new LineFormat("warn", DENIAL_FIELDS, "request denied");
const WOULD_DENY_LINE = new LineFormat("warn", DENIAL_FIELDS, "request would be denied (report mode): forwarded");
const ACCESS_LINE = new LineFormat(
  "info",
  [
    "event",
    "request_id",
    "method",
    "path",
    "status",
    "outcome",
    "decision",
    "key_id",
    "client_ip",
    "duration_ms",
  ] as const,
  "request",
);

const STATUS_TEXT: Record<number, string> = { 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden" };

/** Reads the request target as origin-form path and query; undefined when it is neither origin- nor absolute-form. */
export function requestTarget(url: string | undefined): string | undefined {
  if (url === undefined || url === "") return undefined;
  if (url.charCodeAt(0) === 47) return url;
  if (!/^https?:\/\//i.test(url)) return undefined;
  try {
    const u = new URL(url);
    return u.pathname + u.search;
  } catch {
    return undefined;
  }
}

const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

/** The client's X-Request-Id when it is one plain token of at most 128 characters; a fresh UUID otherwise. */
export function requestIdOf(req: IncomingMessage): string {
  const h = req.headers["x-request-id"];
  return typeof h === "string" && REQUEST_ID.test(h) ? h : randomUuid();
}

function pathOf(target: string): string {
  const q = target.indexOf("?");
  return q < 0 ? target : target.slice(0, q);
}

/** The public proxy listener. */
export class ProxyServer {
  readonly server: Server;
  private readonly forwarder: Forwarder;
  private readonly upgraded = new Set<Socket | Duplex>();
  private readonly settings: Parameters<typeof decide>[2];
  private active = 0;
  private idleWaiters: Array<() => void> = [];
  /** This process's share of `limits` (all of it unless in a cluster). */
  private readonly limits: Limits;
  private readonly limitLog: LimitLog;
  private readonly slots: ClientSlots;
  private readonly upstreamGate: UpstreamGate;
  /** Connection caps in front of HTTP. */
  readonly connections: ConnectionGate;

  constructor(private readonly deps: ProxyDeps) {
    const c = deps.config;
    this.settings = { mode: c.mode, unknown: c.keys.unknown, missing: c.keys.missing };
    deps.metrics.countInflightWith(() => this.active);
    this.forwarder = new Forwarder({ upstream: c.upstream, timeoutMs: c.upstreamTimeoutMs });
    this.server = createServer({
      maxHeaderSize: SERVER_LIMITS.maxHeaderSize,
      headersTimeout: SERVER_LIMITS.headersTimeout,
      requestTimeout: SERVER_LIMITS.requestTimeout,
      keepAliveTimeout: SERVER_LIMITS.keepAliveTimeout,
    });
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
    const idle = this.active === 0 ? Promise.resolve() : new Promise<void>((r) => this.idleWaiters.push(r));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((r) => {
      timer = setTimeout(() => r("timeout"), timeoutMs);
    });
    const result = await Promise.race([idle.then(() => "idle" as const), timedOut]);
    clearTimeout(timer);
    const cut = result === "timeout" ? this.active + this.upgraded.size : this.upgraded.size;
    for (const s of this.upgraded) s.destroy();
    this.server.closeAllConnections();
    await closed;
    await this.forwarder.destroy();
    return { cut };
  }

  private begin(): void {
    this.active++;
  }

  private end(): void {
    this.active--;
    if (this.active === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Reads credential and client IP, and decides; counts, logs and remembers the decision. */
  private decideFor(req: IncomingMessage, requestId: string, t0: number): Decision {
    const bearer = readBearer(req.rawHeaders);
    const credential: Credential =
      bearer.kind === "token" ? { kind: "key", key: this.deps.store.snapshot.lookupToken(bearer.token) } : bearer;
    const client = resolveClientIp(req.socket.remoteAddress, forwardedFor(req), this.deps.config.trustedProxies);
    const decision = decide(credential, client, this.settings);
    const t1 = performance.now();
    this.deps.metrics.decision(decision.outcome, (t1 - t0) / 1000);
    const refused = decision.reason === "ip_not_allowed" || decision.reason === "invalid_client_ip";
    if (decision.keyId !== undefined && client.ip !== undefined) {
      this.deps.sources.record(decision.keyId, client.ip, refused, performance.timeOrigin + t1);
    }
    if (refused) {
      (decision.forward ? WOULD_DENY_LINE : DENIED_LINE).write(this.deps.log, {
        event: decision.forward ? "would_deny" : "denied",
        request_id: requestId,
        reason: decision.reason,
        key_id: decision.keyId,
        client_ip: client.text,
        peer_ip: client.peer,
        method: req.method,
        path: pathOf(req.url ?? ""),
        mode: decision.mode,
      });
    }
    return decision;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const t0 = performance.now();
    this.begin();
    const requestId = requestIdOf(req);
    const target = requestTarget(req.url);
    if (target === undefined) {
      this.deps.metrics.decision("bad_request", 0);
      answer(res, "bad_request", { body: { message: "request target must be a path" }, requestId });
      this.completed(req, res, t0, requestId, "answered", undefined);
      return;
    }
    const decision = this.decideFor(req, requestId, t0);
    if (pathOf(target) === this.deps.config.pingPath) {
      this.ping(res, decision, requestId);
    } else if (!decision.forward) {
      answer(res, decision.reason ?? "bad_request", { clientIp: decision.client.text, requestId });
    } else {
      this.forward(req, res, decision, target, requestId, t0);
      return;
    }
    this.completed(req, res, t0, requestId, "answered", decision);
  }

  /**
   * Forwards an allowed request within the limits: a slot of its client
   * (else 429), its body read first when small (a stalled one: 408), then an
   * upstream connection within `queue_ms` (else 503).
   */
  private forward(
    req: IncomingMessage,
    res: ServerResponse,
    decision: Decision,
    target: string,
    requestId: string,
    t0: number,
  ): void {
    const client = decision.client.text;
    if (!this.slots.take(client)) {
      this.limited("inflight_per_client", client);
      answer(res, "too_many_requests", { requestId });
      this.completed(req, res, t0, requestId, "answered", decision);
      return;
    }
    const answered = (limit: LimitKind, reason: "upstream_busy" | "body_timeout"): void => {
      this.slots.give(client);
      this.limited(limit, client);
      answer(res, reason, { requestId });
      this.completed(req, res, t0, requestId, "answered", decision);
    };
    const done = (result: ForwardResult): void => {
      this.upstreamGate.release();
      this.slots.give(client);
      let outcome: RequestOutcome = "forwarded";
      if (result === "aborted") outcome = "aborted";
      else if (result === "body_idle") {
        outcome = "answered";
        this.limited("body_idle", client);
      } else if (result !== "ok") {
        outcome = "upstream_error";
        this.deps.metrics.upstreamError(result);
        this.deps.log.error(
          { event: "upstream_error", request_id: requestId, kind: result, method: req.method, path: pathOf(target) },
          "upstream request failed",
        );
      }
      this.completed(req, res, t0, requestId, outcome, decision);
    };
    const send = (body: Buffer | Readable | undefined): void => {
      let gone: (() => void) | undefined;
      const withdraw = this.upstreamGate.acquire(
        () => {
          if (gone !== undefined) res.off("close", gone);
          this.forwarder.forward(req, res, decision.client, target, requestId, done, body);
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
          this.slots.give(client);
          this.completed(req, res, t0, requestId, "aborted", decision);
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
        this.slots.give(client);
        this.completed(req, res, t0, requestId, "aborted", decision);
      } else send(start.body);
    });
  }

  /** Accounts for a request once keyfence has written its answer or the forwarder has finished (once per request). */
  private completed(
    req: IncomingMessage,
    res: ServerResponse,
    t0: number,
    requestId: string,
    outcome: RequestOutcome,
    decision: Decision | undefined,
  ): void {
    const seconds = (performance.now() - t0) / 1000;
    this.deps.metrics.request(outcome, seconds);
    if (this.deps.config.accessLog) {
      ACCESS_LINE.write(this.deps.log, {
        event: "access",
        request_id: requestId,
        method: req.method,
        path: pathOf(req.url ?? ""),
        status: res.statusCode,
        outcome,
        decision: decision?.outcome,
        key_id: decision?.keyId,
        client_ip: decision?.client.text,
        duration_ms: Math.round(seconds * 1e6) / 1000,
      });
    }
    this.end();
  }

  private ping(res: ServerResponse, d: Decision, requestId: string): void {
    let reason: AnswerReason;
    if (d.outcome === "bad_request") reason = d.reason ?? "bad_request";
    else if (d.outcome === "missing_key") reason = "missing_api_key";
    else if (d.outcome === "unknown_key") reason = "invalid_api_key";
    else if (!d.forward) reason = d.reason ?? "bad_request";
    else reason = "pong";
    const body =
      d.outcome === "would_deny" && d.reason !== undefined
        ? {
            message: "pong",
            mode: "report",
            would_deny: { reason: d.reason, status: statusOf(d.reason), message: messageOf(d.reason, d.client.text) },
          }
        : undefined;
    answer(res, reason, { clientIp: d.client.text, body, requestId });
  }

  private handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const target = requestTarget(req.url);
    const requestId = requestIdOf(req);
    const decision = this.decideFor(req, requestId, performance.now());
    let reason: AnswerReason | undefined = decision.forward ? undefined : (decision.reason ?? "bad_request");
    if (target === undefined) reason = "bad_request";
    else if (pathOf(target) === this.deps.config.pingPath) reason = decision.forward ? "pong" : reason;
    if (reason !== undefined || target === undefined) {
      const r = reason ?? "bad_request";
      const status = statusOf(r);
      answerSocket(socket, status, r, messageOf(r, decision.client.text), STATUS_TEXT[status] ?? "OK");
      return;
    }
    this.upgraded.add(socket);
    socket.once("close", () => this.upgraded.delete(socket));
    const up = pipeUpgrade(
      req,
      socket,
      head,
      decision.client,
      target,
      requestId,
      {
        upstream: this.deps.config.upstream,
        prefix: this.forwarder.pathPrefix,
        timeoutMs: this.deps.config.upstreamTimeoutMs,
      },
      (result) => {
        if (result === "connect" || result === "timeout" || result === "reset") this.deps.metrics.upstreamError(result);
      },
    );
    this.upgraded.add(up);
    up.once("close", () => this.upgraded.delete(up));
    closeWhenIdle(socket, up, this.limits.tunnelIdleMs, () => this.limited("tunnel_idle", decision.client.text));
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
