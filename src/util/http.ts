/** Small HTTP helpers shared by both listeners. */
import { randomUUID } from "node:crypto";
import {
  createServer,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type Server,
  type ServerResponse,
} from "node:http";

/** Headers that describe one connection, never forwarded (RFC 9110 §7.6.1, plus the legacy proxy ones). */
export const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "proxy-authorization",
  "proxy-authenticate",
]);

/** Writes a JSON answer that is never cached; a response already started is cut instead. */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: OutgoingHttpHeaders = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-store",
    ...headers,
  });
  res.end(text);
}

/** Server limits of both listeners, chosen deliberately (README "Hostile input"). */
export const SERVER_LIMITS = {
  /** Request line plus headers. */
  maxHeaderSize: 16 * 1024,
  /** Slow-header clients (slowloris) are cut off after this. */
  headersTimeout: 20_000,
  /** A whole request, body included, must arrive within this. */
  requestTimeout: 300_000,
  /** Idle keep-alive connections: above the 60 s idle timeout of common load balancers. */
  keepAliveTimeout: 65_000,
} as const;

/** The X-Forwarded-For value; Node joins repeated header lines with ", ", so they read as one list. */
export function forwardedFor(req: IncomingMessage): string | undefined {
  const h = req.headers["x-forwarded-for"];
  return typeof h === "string" || h === undefined ? h : h.join(", ");
}

/**
 * A server with {@link SERVER_LIMITS}, `options` replacing its timeouts,
 * that reads every header line the size limit lets in. Node's default reads
 * the first 2,000 and silently drops the rest: a credential, a forwarded
 * address or a method override behind enough filler lines went unseen, while
 * an ingress asking the decision listener passes them all to the application.
 */
export function createLimitedServer(
  options: {
    readonly requestTimeout?: number;
    readonly keepAliveTimeout?: number;
    /** false: a request without Host reaches the handler (Node answers a bare 400 otherwise). */
    readonly requireHostHeader?: boolean;
  } = {},
): Server {
  const server = createServer({ ...SERVER_LIMITS, ...options });
  // 0: no limit on the count (Node's parser reads "no more than 0" as unlimited); maxHeaderSize bounds the bytes.
  server.maxHeadersCount = 0;
  return server;
}

/** Starts `server` on `host:port`; resolves with the bound address (port 0 picks one), rejects when it cannot bind. */
export function listenOn(server: Server, host: string, port: number): Promise<{ host: string; port: number }> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      const a = server.address();
      resolve(typeof a === "object" && a !== null ? { host: a.address, port: a.port } : { host, port });
    });
  });
}

const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

/** The client's X-Request-Id when it is one plain token of at most 128 characters; a fresh UUID otherwise. */
export function requestIdOf(req: IncomingMessage): string {
  const h = req.headers["x-request-id"];
  return typeof h === "string" && REQUEST_ID.test(h) ? h : randomUUID();
}

/** True when a request announces a body. */
export function hasBody(headers: {
  "content-length"?: string | undefined;
  "transfer-encoding"?: string | undefined;
}): boolean {
  if (headers["transfer-encoding"] !== undefined) return true;
  const cl = headers["content-length"];
  return cl !== undefined && cl !== "0";
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** True when `s` is an RFC 9110 `token` (what method and header names are made of). */
export function isToken(s: string): boolean {
  return TOKEN.test(s);
}

/** A listener's requests in flight: counted, and waited on while it drains. */
export class InFlight {
  private count = 0;
  private waiters: Array<() => void> = [];

  /** How many requests are in flight now. */
  get size(): number {
    return this.count;
  }

  /** A request starts. */
  begin(): void {
    this.count++;
  }

  /** A request has ended; the last one wakes whoever waits in {@link idleWithin}. */
  end(): void {
    this.count--;
    if (this.count === 0 && this.waiters.length > 0) {
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    }
  }

  /** Resolves true once no request is in flight, false if `timeoutMs` passes first (a listener's drain). */
  async idleWithin(timeoutMs: number): Promise<boolean> {
    if (this.count === 0) return true;
    const idle = new Promise<void>((r) => this.waiters.push(r));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<false>((r) => {
      timer = setTimeout(() => r(false), timeoutMs);
    });
    const result = await Promise.race([idle.then(() => true as const), timedOut]);
    clearTimeout(timer);
    return result;
  }
}
