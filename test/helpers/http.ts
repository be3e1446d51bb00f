/** A small HTTP client for tests: raw header lists (repeats kept), a chosen local address, full bodies. */
import { request as httpRequest, type IncomingHttpHeaders } from "node:http";

/** A complete response. */
export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
  json: () => unknown;
}

/** Request options. */
export interface Send {
  method?: string;
  /** Header pairs, repeats allowed: [["Authorization", "Bearer x"], ...]. */
  headers?: Array<[string, string]>;
  body?: string | Buffer;
  /** Source address on loopback, e.g. 127.0.0.2 to act as another client. */
  localAddress?: string;
  timeoutMs?: number;
}

/** Sends one request to `url` and reads the whole answer. */
export function send(url: string, opts: Send = {}): Promise<Reply> {
  const u = new URL(url);
  const flat: string[] = [];
  let hasHost = false;
  for (const [k, v] of opts.headers ?? []) {
    if (k.toLowerCase() === "host") hasHost = true;
    flat.push(k, v);
  }
  if (!hasHost) flat.unshift("Host", u.host);
  if (opts.body !== undefined) flat.push("Content-Length", String(Buffer.byteLength(opts.body)));
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: u.hostname.replace(/^\[|\]$/g, ""),
        port: u.port,
        path: u.pathname + u.search,
        method: opts.method ?? "GET",
        headers: flat,
        localAddress: opts.localAddress,
        agent: false,
        timeout: opts.timeoutMs ?? 10_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const body = Buffer.concat(chunks).toString("utf8");
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            rawHeaders: res.rawHeaders,
            body,
            json: () => JSON.parse(body) as unknown,
          });
        });
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`request to ${url} timed out`)));
    req.on("error", reject);
    req.end(opts.body);
  });
}

/** `Authorization: Bearer <token>` as a header pair. */
export function bearer(token: string): [string, string] {
  return ["Authorization", `Bearer ${token}`];
}
