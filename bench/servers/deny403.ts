/** Benchmark floor for denials: node:http answering a fixed JSON 403 and nothing else; prints its port. */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

const body = Buffer.from('{"message":"source IP 127.0.0.1 is not allowed for this API key"}');
const server = createServer((_req, res) => {
  res.writeHead(403, { "content-type": "application/json", "content-length": body.length });
  res.end(body);
});
server.keepAliveTimeout = 65_000;
server.listen(0, "127.0.0.1", () => process.stdout.write(`${(server.address() as AddressInfo).port}\n`));
for (const s of ["SIGTERM", "SIGINT"] as const) process.on(s, () => process.exit(0));
