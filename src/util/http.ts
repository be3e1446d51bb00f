/** Small HTTP helpers shared by both listeners. */
import type { OutgoingHttpHeaders, ServerResponse } from "node:http";

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
