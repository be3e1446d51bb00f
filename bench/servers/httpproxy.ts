/** Benchmark contender: http-proxy 1.18 (or http-proxy-3 with "3") with a keep-alive agent, no checks. */
import { Agent, createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import httpProxy from "http-proxy";
import { createProxyServer as createProxy3 } from "http-proxy-3";

const upstream = process.argv[2] ?? "http://127.0.0.1:3000";
const agent = new Agent({ keepAlive: true, maxSockets: 256 });
const three = process.argv[3] === "3";
const onError = (_err: Error, _req: unknown, res: unknown): void => {
  const r = res as { writeHead?: (s: number) => void; end?: () => void };
  r.writeHead?.(502);
  r.end?.();
};
let web: (req: IncomingMessage, res: ServerResponse) => void;
if (three) {
  const p = createProxy3({ target: upstream, agent, xfwd: true });
  p.on("error", onError);
  web = (req, res) => p.web(req, res);
} else {
  const p = httpProxy.createProxyServer({ target: upstream, agent, xfwd: true });
  p.on("error", onError);
  web = (req, res) => p.web(req, res);
}
const server = createServer(web);
server.keepAliveTimeout = 65_000;
server.listen(0, "127.0.0.1", () => process.stdout.write(`${(server.address() as AddressInfo).port}\n`));

for (const s of ["SIGTERM", "SIGINT"] as const) process.on(s, () => process.exit(0));
