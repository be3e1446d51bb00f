/** Benchmark upstream: a minimal keep-alive HTTP server answering a small body once it has read the request's; prints its port. */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

const body = Buffer.from('{"ok":true}');
const server = createServer((req, res) => {
  // Answered once the whole body is read, as an application taking an upload would.
  req.on("end", () => {
    res.writeHead(200, { "content-type": "application/json", "content-length": body.length });
    res.end(body);
  });
  req.resume();
});
server.keepAliveTimeout = 65_000;
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
});

for (const s of ["SIGTERM", "SIGINT"] as const) process.on(s, () => process.exit(0));
