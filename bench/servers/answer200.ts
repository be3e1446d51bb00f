/** Benchmark floor for decisions: node:http answering 200 with an empty body and one header, nothing else; prints its port. */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

const server = createServer((_req, res) => {
  res.writeHead(200, { "content-length": 0, "x-keyfence-key-id": "bench_allowed" });
  res.end();
});
server.keepAliveTimeout = 65_000;
server.listen(0, "127.0.0.1", () => process.stdout.write(`${(server.address() as AddressInfo).port}\n`));
for (const s of ["SIGTERM", "SIGINT"] as const) process.on(s, () => process.exit(0));
