/**
 * Forwarding an allowed request to the upstream over an undici keep-alive
 * pool: hop-by-hop headers stripped, X-Forwarded-* set, bodies streamed both
 * ways with backpressure, the upstream request aborted when the client leaves.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Readable } from "node:stream";
import { Pool, type Dispatcher } from "undici";
import type { ClientIp } from "../clientip/resolve.js";
import { upstreamHeaderName } from "../policy/credential.js";
import { BodyIdleError } from "./body.js";
import { HOP_BY_HOP, hasBody } from "../util/http.js";
import { answer } from "./respond.js";

/** Lengths of the {@link HOP_BY_HOP} names: a header of another length needs no lowercasing to be kept. */
const HOP_LENGTHS = new Set([...HOP_BY_HOP].map((h) => h.length));
/**
 * Headers in which a proxy tells the client's address (RFC 7239 `Forwarded`
 * and the de-facto ones upstream frameworks read, such as Go chi's RealIP and
 * Rails' remote_ip): kept as sent from a trusted proxy, dropped otherwise,
 * so an untrusted client cannot name its own address to the upstream.
 */
export const CLIENT_ADDRESS_HEADERS: ReadonlySet<string> = new Set([
  "forwarded",
  "x-real-ip",
  "true-client-ip",
  "x-client-ip",
  "client-ip",
  "x-cluster-client-ip",
  "cf-connecting-ip",
  "fastly-client-ip",
]);

/** The same for request headers, which also lose or check Expect, X-Request-Id and the X-Forwarded-* and client-address ones. */
const REQUEST_LENGTHS = new Set([
  ...HOP_LENGTHS,
  ...["expect", "x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"].map((h) => h.length),
  ...[...CLIENT_ADDRESS_HEADERS].map((h) => h.length),
]);

/**
 * The forwarding headers keyfence sets or overwrites. Spelled with `_` for `-`
 * they are dropped: CGI, WSGI, PHP and Rack upstreams read `X_Forwarded_Host`
 * as `HTTP_X_FORWARDED_HOST`, the same variable as the real one.
 */
const FORWARDED_HEADERS = new Set(["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]);

/** The same for response headers, which are also checked for the upstream's own X-Request-Id. */
const RESPONSE_LENGTHS = new Set([...HOP_LENGTHS, "x-request-id".length]);

/** How a forwarded request ended, for metrics and logs (`body_idle`: the client's body stalled, answered 408). */
export type ForwardResult = "ok" | "connect" | "timeout" | "reset" | "aborted" | "body_idle";

/** Most upstream connections kept at once, unless configured otherwise. */
export const UPSTREAM_CONNECTIONS = 256;

/** Upstream connection settings. */
export interface ForwarderOptions {
  readonly upstream: URL;
  /** No response headers within this time: 504. Also the idle limit between body chunks. */
  readonly timeoutMs: number;
  /** Most upstream connections kept at once. */
  readonly connections?: number;
}

/** Names listed in a Connection header (lowercase), or undefined when there are none. */
export function connectionTokens(value: string | undefined): Set<string> | undefined {
  if (value === undefined) return undefined;
  const out = new Set<string>();
  for (const t of value.split(",")) {
    const name = t.trim().toLowerCase();
    if (name !== "") out.add(name);
  }
  return out;
}

/** The checked key's identity, as sent upstream with `forward_identity` (SPEC §9). */
export interface Identity {
  readonly keyId: string;
  /** The key's scopes, space-separated (as an OAuth `scope`). */
  readonly scopes: string;
  readonly sandbox: boolean;
}

/**
 * True for a header keyfence owns (`X-Keyfence-*`), in any case and with `_`
 * or `.` for `-` anywhere in the prefix: CGI, WSGI, PHP and Rack upstreams read
 * `X_Keyfence_Key_Id` (PHP also `X.Keyfence.Key.Id`) as `HTTP_X_KEYFENCE_KEY_ID`,
 * the same variable as the real one (see {@link upstreamHeaderName}).
 */
export function isKeyfenceHeader(name: string): boolean {
  return name.length > 11 && (name.charCodeAt(0) | 32) === 120 && /^x[-_.]keyfence[-_.]/i.test(name);
}

/**
 * Builds the request headers for the upstream from the client's raw headers
 * (order, case and repeats kept), with `requestId` as X-Request-Id.
 * `keepUpgrade` keeps Connection/Upgrade for WebSocket handshakes. Client-sent
 * `X-Keyfence-*` headers, and X-Forwarded-* ones spelled with `_` or `.`, are always
 * dropped, and client-address headers (`Forwarded`, `X-Real-IP`...) unless the
 * peer is a trusted proxy; `identity`, when given, is sent instead.
 */
export function upstreamHeaders(
  req: IncomingMessage,
  client: ClientIp,
  requestId: string,
  keepUpgrade = false,
  identity?: Identity,
): string[] {
  const raw = req.rawHeaders;
  const listed = connectionTokens(req.headers.connection);
  const out: string[] = [];
  let proto: string | undefined;
  let host: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (isKeyfenceHeader(name)) continue;
    if (listed === undefined && !REQUEST_LENGTHS.has(name.length)) {
      out.push(name, raw[i + 1] as string);
      continue;
    }
    const lower = name.toLowerCase();
    if (lower === "x-forwarded-for" || lower === "expect" || lower === "x-request-id") continue;
    const dashed = upstreamHeaderName(lower);
    if (dashed !== lower && FORWARDED_HEADERS.has(dashed)) continue;
    if (!client.peerTrusted && CLIENT_ADDRESS_HEADERS.has(dashed)) continue;
    if (HOP_BY_HOP.has(lower) || listed?.has(lower)) {
      if (!(keepUpgrade && (lower === "connection" || lower === "upgrade"))) continue;
    }
    if (lower === "x-forwarded-proto" || lower === "x-forwarded-host") {
      if (!client.peerTrusted) continue;
      if (lower === "x-forwarded-proto") proto = raw[i + 1];
      else host = raw[i + 1];
    }
    out.push(name, raw[i + 1] as string);
  }
  const xff = client.forwardedFor;
  out.push("x-forwarded-for", xff === undefined || xff === "" ? client.peer : `${xff}, ${client.peer}`);
  if (proto === undefined) out.push("x-forwarded-proto", "http");
  if (host === undefined && req.headers.host !== undefined) out.push("x-forwarded-host", req.headers.host);
  out.push("x-request-id", requestId);
  if (identity !== undefined) {
    out.push("x-keyfence-key-id", identity.keyId);
    out.push("x-keyfence-key-scopes", identity.scopes);
    out.push("x-keyfence-sandbox", identity.sandbox ? "true" : "false");
  }
  return out;
}

/** The path to request upstream: the upstream's path prefix plus the request target. */
export function upstreamPath(prefix: string, target: string): string {
  return prefix === "" ? target : prefix + target;
}

/**
 * The upstream's response headers as writeHead's flat list (raw bytes read
 * as latin1, the byte-transparent reading Node's own HTTP client uses), hop-by-hop ones
 * and those named in Connection removed, `requestId` (when given) added as
 * X-Request-Id unless the upstream set one.
 */
export function responseHeaders(raw: readonly (Buffer | string)[], requestId?: string): string[] {
  const out: string[] = [];
  let listed: Set<string> | undefined;
  let hasRequestId = false;
  for (let i = 0; i < raw.length; i += 2) {
    const n = raw[i] as Buffer | string;
    const v = raw[i + 1];
    const name = typeof n === "string" ? n : n.toString("latin1");
    const value = v === undefined ? "" : typeof v === "string" ? v : v.toString("latin1");
    if (RESPONSE_LENGTHS.has(name.length)) {
      const lower = name.toLowerCase();
      if (lower === "x-request-id") hasRequestId = true;
      else if (HOP_BY_HOP.has(lower)) {
        if (lower === "connection") listed = connectionTokens(value);
        continue;
      }
    }
    out.push(name, value);
  }
  if (listed !== undefined && listed.size > 0) {
    const kept: string[] = [];
    for (let i = 0; i < out.length; i += 2) {
      const name = out[i] as string;
      const lower = name.toLowerCase();
      if (!listed.has(lower)) kept.push(name, out[i + 1] as string);
      else if (lower === "x-request-id") hasRequestId = false;
    }
    if (!hasRequestId && requestId !== undefined) kept.push("x-request-id", requestId);
    return kept;
  }
  if (!hasRequestId && requestId !== undefined) out.push("x-request-id", requestId);
  return out;
}

/** Classifies an undici error. */
export function classify(err: Error): ForwardResult {
  const code = (err as { code?: string }).code ?? "";
  if (code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT" || code === "UND_ERR_CONNECT_TIMEOUT") {
    return "timeout";
  }
  if (code === "UND_ERR_ABORTED" || err.name === "AbortError") return "aborted";
  if (
    code === "ECONNREFUSED" ||
    code === "ENOTFOUND" ||
    code === "EAI_AGAIN" ||
    code === "EHOSTUNREACH" ||
    code === "ENETUNREACH"
  ) {
    return "connect";
  }
  return "reset";
}

class ClientGone extends Error {
  constructor() {
    super("client closed the connection");
    this.name = "AbortError";
  }
}

/** Sends allowed requests upstream over one keep-alive pool. */
export class Forwarder {
  private readonly pool: Pool;
  private readonly prefix: string;

  constructor(private readonly options: ForwarderOptions) {
    const u = options.upstream;
    this.prefix = u.pathname === "/" ? "" : u.pathname.replace(/\/$/, "");
    this.pool = new Pool(u.origin, {
      connections: options.connections ?? UPSTREAM_CONNECTIONS,
      pipelining: 1,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      connectTimeout: Math.min(options.timeoutMs, 10_000),
      keepAliveTimeout: 4_000,
    });
  }

  /** The upstream this forwarder sends to. */
  get upstream(): URL {
    return this.options.upstream;
  }

  /** The upstream path prefix ("" when none). */
  get pathPrefix(): string {
    return this.prefix;
  }

  /**
   * Forwards `req` and streams the answer into `res`; `done` reports how it ended (once).
   * `body`, when given, is sent instead of reading `req` (see body.ts).
   * The handler uses undici's original callback interface (onConnect,
   * onHeaders…), which undici 7's client calls directly: the newer
   * controller interface is adapted onto it per request, and the adapter
   * also parses every response's headers into an object we never read.
   */
  forward(
    req: IncomingMessage,
    res: ServerResponse,
    client: ClientIp,
    target: string,
    requestId: string,
    done: (result: ForwardResult) => void,
    body?: Buffer | Readable,
    identity?: Identity,
  ): void {
    let abort: ((err?: Error) => void) | undefined;
    let resume: (() => void) | undefined;
    let finished = false;
    const finish = (result: ForwardResult): void => {
      if (finished) return;
      finished = true;
      done(result);
    };
    res.once("close", () => {
      if (!res.writableFinished) {
        abort?.(new ClientGone());
        finish("aborted");
      }
    });
    const opts: Dispatcher.DispatchOptions = {
      path: upstreamPath(this.prefix, target),
      method: req.method as Dispatcher.HttpMethod,
      headers: upstreamHeaders(req, client, requestId, false, identity),
      body: body ?? (hasBody(req.headers) ? req : null),
    };
    /* eslint-disable @typescript-eslint/no-deprecated -- the callback interface, see above */
    const handler: Dispatcher.DispatchHandler = {
      onConnect: (a) => {
        abort = a;
        if (res.destroyed) a(new ClientGone());
      },
      onHeaders: (statusCode, rawHeaders, r, statusText) => {
        resume = r;
        // Only writeHead's raw list keeps repeated headers (Set-Cookie): no setHeader before it.
        res.writeHead(statusCode, statusText, responseHeaders(rawHeaders, requestId));
        return true;
      },
      onData: (chunk) => {
        if (res.write(chunk)) return true;
        if (resume !== undefined) res.once("drain", resume);
        return false;
      },
      onComplete: (trailers) => {
        if (trailers && trailers.length > 0) {
          const flat = responseHeaders(trailers);
          const tuples: [string, string][] = [];
          for (let i = 0; i < flat.length; i += 2) tuples.push([flat[i] as string, flat[i + 1] as string]);
          res.addTrailers(tuples);
        }
        res.end();
        finish("ok");
      },
      onError: (err) => {
        if (err instanceof BodyIdleError && !res.headersSent) {
          answer(res, "body_timeout", { requestId });
          finish("body_idle");
          return;
        }
        const result = classify(err);
        if (result === "aborted" || res.destroyed) {
          finish("aborted");
          return;
        }
        if (!res.headersSent) {
          answer(res, result === "timeout" ? "upstream_timeout" : "upstream_unavailable", { requestId });
        } else {
          res.destroy(err);
        }
        finish(result);
      },
    };
    /* eslint-enable @typescript-eslint/no-deprecated */
    this.pool.dispatch(opts, handler);
  }

  /** Closes idle upstream connections and waits for in-flight ones. */
  async close(): Promise<void> {
    await this.pool.close();
  }

  /** Drops every upstream connection now. */
  async destroy(): Promise<void> {
    await this.pool.destroy();
  }
}
