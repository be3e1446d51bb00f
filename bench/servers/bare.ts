/**
 * Benchmark contender: keyfence's own forwarder (undici Pool behind node:http,
 * same header handling) with no enforcement at all: the floor of our stack.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { resolveClientIp, compileTrust, type CompiledTrust } from "../../src/clientip/resolve.js";
import { Forwarder } from "../../src/proxy/forward.js";
import { forwardedFor } from "../../src/util/http.js";

const upstream = new URL(process.argv[2] ?? "http://127.0.0.1:3000");
const forwarder = new Forwarder({ upstream, timeoutMs: 30_000 });
const trust = compileTrust([]) as CompiledTrust;
let n = 0;
const server = createServer((req, res) => {
  const client = resolveClientIp(req.socket.remoteAddress, forwardedFor(req), trust);
  forwarder.forward(req, res, client, req.url ?? "/", `bench-${n++}`, () => undefined);
});
server.keepAliveTimeout = 65_000;
server.listen(0, "127.0.0.1", () => process.stdout.write(`${(server.address() as AddressInfo).port}\n`));

for (const s of ["SIGTERM", "SIGINT"] as const) process.on(s, () => process.exit(0));
