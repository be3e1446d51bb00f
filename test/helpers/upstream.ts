/**
 * A real upstream on loopback for integration tests: records what reached it
 * and answers by path (echo, streaming download, slow, WebSocket echo).
 */
import { createHash } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { WebSocketServer } from "ws";

/** One request as the upstream saw it. */
export interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
  bodyBytes: number;
  bodySha256: string;
}

/** A running test upstream. */
export interface Upstream {
  url: string;
  port: number;
  seen: Seen[];
  /** Requests whose connection closed before the upstream finished answering. */
  aborted: string[];
  server: Server;
  close(): Promise<void>;
}

/** A header value carrying the UTF-8 bytes of "é ✓", as Node's HTTP code represents raw bytes (one latin1 char per byte). */
export const UTF8_HEADER = Buffer.from("é ✓", "utf8").toString("latin1");

/**
 * Paths:
 * - `/download/N`: streams N bytes of a repeating pattern in 64 KiB chunks
 * - `/slow/MS`: waits MS before sending headers
 * - `/hang`: never answers
 * - `/ws`: WebSocket echo
 * - anything else: 200 JSON echo of method, url, headers and body digest
 */
export async function startUpstream(): Promise<Upstream> {
  const seen: Seen[] = [];
  const aborted: string[] = [];
  const server = createServer((req, res) => {
    res.on("close", () => {
      if (!res.writableFinished) aborted.push(req.url ?? "");
    });
    const hash = createHash("sha256");
    let bytes = 0;
    req.on("data", (c: Buffer) => {
      bytes += c.length;
      hash.update(c);
    });
    req.on("end", () => {
      const record: Seen = {
        method: req.method ?? "",
        url: req.url ?? "",
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        bodyBytes: bytes,
        bodySha256: hash.digest("hex"),
      };
      seen.push(record);
      const url = req.url ?? "/";
      const download = /^\/download\/(\d+)/.exec(url);
      const slow = /^\/slow\/(\d+)/.exec(url);
      if (download) {
        let left = Number(download[1]);
        res.writeHead(200, { "content-type": "application/octet-stream", "content-length": left });
        const chunk = Buffer.alloc(65536, "keyfence");
        const pump = (): void => {
          while (left > 0) {
            const n = Math.min(left, chunk.length);
            left -= n;
            if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
              res.once("drain", pump);
              return;
            }
          }
          res.end();
        };
        pump();
      } else if (slow) {
        setTimeout(() => {
          if (!res.destroyed) res.end("slow");
        }, Number(slow[1]));
      } else if (url.startsWith("/hang")) {
        // never answers
      } else {
        const body = JSON.stringify(record);
        res.writeHead(200, {
          "content-type": "application/json",
          "set-cookie": ["a=1", "b=2"],
          "x-upstream": "yes",
          // Raw UTF-8 bytes in a header value (a filename, say): Node writes header strings as latin1.
          "x-bytes": UTF8_HEADER,
          connection: "keep-alive, x-hop",
          "x-hop": "must not pass",
        });
        // A Buffer, not a string: Node writes a string body in one write with the
        // header block, in the body's encoding (UTF-8), which would re-encode x-bytes.
        res.end(Buffer.from(body));
      }
    });
  });
  const wss = new WebSocketServer({ server, path: "/ws" });
  wss.on("connection", (ws, req) => {
    ws.send(JSON.stringify({ hello: true, xff: req.headers["x-forwarded-for"], url: req.url, headers: req.headers }));
    ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
  // Every header line recorded, as an application reading all of them would (Node's default keeps 2,000).
  server.maxHeadersCount = 0;
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    seen,
    aborted,
    server,
    async close() {
      for (const c of wss.clients) c.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
