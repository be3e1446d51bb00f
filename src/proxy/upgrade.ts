/**
 * Upgrade requests (WebSocket) once allowed: the handshake is rewritten like
 * any forwarded request, then the two sockets are piped byte for byte.
 */
import type { IncomingMessage } from "node:http";
import { connect as netConnect, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { connect as tlsConnect } from "node:tls";
import type { ClientIp } from "../clientip/resolve.js";
import { classify, upstreamHeaders, upstreamPath, type ForwardResult } from "./forward.js";
import { messageOf } from "../policy/answers.js";
import { answerSocket } from "./respond.js";

/** Where and how to open upgraded connections. */
export interface UpgradeTarget {
  readonly upstream: URL;
  readonly prefix: string;
  readonly timeoutMs: number;
}

/** Opens the upstream connection, replays the handshake and pipes both ways; `done` reports once how the handshake went. */
export function pipeUpgrade(
  req: IncomingMessage,
  client: Socket | Duplex,
  head: Buffer,
  clientIp: ClientIp,
  target: string,
  requestId: string,
  to: UpgradeTarget,
  done: (result: ForwardResult) => void,
): Socket {
  const u = to.upstream;
  const host = u.hostname.startsWith("[") ? u.hostname.slice(1, -1) : u.hostname;
  const secure = u.protocol === "https:";
  const port = Number(u.port || (secure ? 443 : 80));
  const upstream: Socket = secure
    ? tlsConnect({ host, port, servername: host === u.hostname ? host : undefined, ALPNProtocols: ["http/1.1"] })
    : netConnect({ host, port });
  let answered = false;
  let reported = false;
  const report = (r: ForwardResult): void => {
    if (!reported) {
      reported = true;
      done(r);
    }
  };
  const timer = setTimeout(() => {
    fail("timeout");
  }, to.timeoutMs);
  const fail = (result: ForwardResult): void => {
    clearTimeout(timer);
    upstream.destroy();
    if (!answered && result !== "aborted") {
      answered = true;
      const timeout = result === "timeout";
      const reason = timeout ? "upstream_timeout" : "upstream_unavailable";
      answerSocket(client, timeout ? 504 : 502, reason, messageOf(reason), timeout ? "Gateway Timeout" : "Bad Gateway");
    } else {
      client.destroy();
    }
    report(result);
  };

  const headers = upstreamHeaders(req, clientIp, requestId, true);
  let text = `${req.method ?? "GET"} ${upstreamPath(to.prefix, target)} HTTP/1.1\r\n`;
  for (let i = 0; i < headers.length; i += 2) text += `${headers[i]}: ${headers[i + 1]}\r\n`;
  text += "\r\n";
  upstream.setNoDelay(true);
  upstream.write(text);
  if (head.length > 0) upstream.write(head);

  // Pipe the answer only once it starts: an upstream that closes without a
  // word still gets the client a 502.
  upstream.once("data", (chunk: Buffer) => {
    answered = true;
    clearTimeout(timer);
    report("ok");
    client.write(chunk);
    upstream.pipe(client);
  });
  upstream.on("error", (err) => fail(classify(err)));
  client.on("error", () => {
    upstream.destroy();
  });
  client.on("close", () => {
    clearTimeout(timer);
    upstream.destroy();
    report("aborted");
  });
  upstream.on("close", () => {
    clearTimeout(timer);
    if (!answered) fail("reset");
  });
  client.pipe(upstream);
  return upstream;
}
