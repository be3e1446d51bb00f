/**
 * Upgrade requests (WebSocket, h2c) once allowed: the handshake is rewritten
 * like any forwarded request and sent upstream with Node's HTTP client, which
 * parses the answer. Only `101 Switching Protocols` turns the connection into
 * a raw tunnel; any other answer is relayed as an ordinary response with
 * `Connection: close` and the client connection ends with it, so nothing the
 * client sent after the handshake ever reaches the upstream unchecked.
 */
import { request as httpRequest, type ClientRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { ClientIp } from "../clientip/resolve.js";
import { answerPlan } from "../policy/enforce.js";
import {
  classify,
  responseHeaders,
  upstreamHeaders,
  upstreamPath,
  type ForwardResult,
  type Identity,
} from "./forward.js";
import { answerPlanOnSocket } from "./respond.js";

/** Where and how to open upgraded connections. */
export interface UpgradeTarget {
  readonly upstream: URL;
  readonly prefix: string;
  readonly timeoutMs: number;
  /** The checked key's identity, sent upstream with `forward_identity`. */
  readonly identity?: Identity | undefined;
}

/** How an upgrade handshake ended: the forwarding result and the status the client got (0 when it left first). */
export interface UpgradeOutcome {
  readonly result: ForwardResult;
  readonly status: number;
}

/** Something the listener cuts on drain. */
export interface Cuttable {
  destroy(): void;
}

function contentLength(req: IncomingMessage): number | undefined {
  const cl = req.headers["content-length"];
  if (cl === undefined) return 0;
  return /^[0-9]{1,15}$/.test(cl) ? Number(cl) : undefined;
}

function head(status: number, statusText: string, flat: readonly string[], extra: string): string {
  let text = `HTTP/1.1 ${String(status)} ${statusText}\r\n`;
  for (let i = 0; i < flat.length; i += 2) text += `${flat[i] as string}: ${flat[i + 1] as string}\r\n`;
  return `${text}${extra}\r\n`;
}

/**
 * Sends the handshake upstream and carries out its answer (see the module
 * comment). Whatever the client sends after the handshake stays unread until
 * the upstream switches protocols; a request body (Content-Length only) is
 * sent first. `done` reports once how it went.
 */
export function pipeUpgrade(
  req: IncomingMessage,
  client: Socket | Duplex,
  early: Buffer,
  clientIp: ClientIp,
  target: string,
  requestId: string,
  to: UpgradeTarget,
  done: (outcome: UpgradeOutcome) => void,
): Cuttable {
  let reported = false;
  const report = (result: ForwardResult, status: number): void => {
    if (!reported) {
      reported = true;
      done({ result, status });
    }
  };
  client.pause();
  if (early.length > 0) client.unshift(early);
  const bodyBytes = contentLength(req);
  if (bodyBytes === undefined || req.headers["transfer-encoding"] !== undefined) {
    const plan = answerPlan(
      "bad_request",
      "",
      undefined,
      "an upgrade request may carry a body only with Content-Length",
    );
    answerPlanOnSocket(client, plan, requestId);
    report("ok", 400);
    return client;
  }

  const upReq = openUpstream(req, target, clientIp, requestId, to);
  let answered = false;
  const timer = setTimeout(() => {
    const err = new Error("upstream timed out") as NodeJS.ErrnoException;
    err.code = "UND_ERR_HEADERS_TIMEOUT";
    upReq.destroy(err);
  }, to.timeoutMs);

  upReq.on("upgrade", (res: IncomingMessage, upSocket: Socket, upHead: Buffer) => {
    answered = true;
    clearTimeout(timer);
    if (client.destroyed) {
      upSocket.destroy();
      report("aborted", 0);
      return;
    }
    tunnel(client, res, upSocket, upHead, requestId);
    report("ok", 101);
  });

  upReq.on("response", (res: IncomingMessage) => {
    answered = true;
    clearTimeout(timer);
    const status = res.statusCode ?? 502;
    if (client.destroyed) {
      upReq.destroy();
      report("aborted", 0);
      return;
    }
    relayAnswer(req, res, client, requestId, {
      end: () => {
        upReq.destroy();
        report("ok", status);
      },
      fail: () => report("reset", status),
    });
  });

  upReq.on("error", (err: Error) => {
    clearTimeout(timer);
    const result = classify(err);
    if (answered || client.destroyed) {
      client.destroy();
      report(result, 0);
      return;
    }
    answered = true;
    const plan = answerPlan(result === "timeout" ? "upstream_timeout" : "upstream_unavailable");
    answerPlanOnSocket(client, plan, requestId);
    report(result, plan.status);
  });
  client.on("close", () => {
    if (!answered) {
      clearTimeout(timer);
      upReq.destroy();
      report("aborted", 0);
    }
  });
  client.on("error", () => upReq.destroy());

  sendBody(client, upReq, bodyBytes);
  return upReq;
}

/** Joins client and upstream after a 101: the upstream's head goes to the client, then bytes flow both ways until either closes. */
function tunnel(
  client: Socket | Duplex,
  res: IncomingMessage,
  upSocket: Socket,
  upHead: Buffer,
  requestId: string,
): void {
  const flat = res.rawHeaders;
  let hasId = false;
  for (let i = 0; i < flat.length; i += 2) if ((flat[i] as string).toLowerCase() === "x-request-id") hasId = true;
  const extra = hasId ? "" : `x-request-id: ${requestId}\r\n`;
  client.write(Buffer.from(head(101, res.statusMessage ?? "Switching Protocols", flat, extra), "latin1"));
  if (upHead.length > 0) client.write(upHead);
  upSocket.on("error", () => client.destroy());
  client.on("error", () => upSocket.destroy());
  upSocket.on("close", () => client.destroy());
  client.on("close", () => upSocket.destroy());
  upSocket.pipe(client);
  client.pipe(upSocket);
}

/**
 * Relays an upstream answer other than 101, then closes the connection: the
 * client's later bytes (pipelined requests) are never read, so never forwarded.
 */
function relayAnswer(
  req: IncomingMessage,
  res: IncomingMessage,
  client: Socket | Duplex,
  requestId: string,
  on: { end: () => void; fail: () => void },
): void {
  const status = res.statusCode ?? 502;
  const flat = responseHeaders(res.rawHeaders, requestId);
  // Node's client has undone chunked framing; without a Content-Length the body is chunked again.
  const chunked =
    res.headers["content-length"] === undefined && req.method !== "HEAD" && status !== 204 && status !== 304;
  const extra = `${chunked ? "transfer-encoding: chunked\r\n" : ""}connection: close\r\n`;
  client.write(Buffer.from(head(status, res.statusMessage ?? "", flat, extra), "latin1"));
  res.on("data", (chunk: Buffer) => {
    if (chunked) client.write(`${chunk.length.toString(16)}\r\n`);
    const more = client.write(chunk);
    if (chunked) client.write("\r\n");
    if (!more) {
      res.pause();
      client.once("drain", () => res.resume());
    }
  });
  res.on("end", () => {
    client.end(chunked ? "0\r\n\r\n" : "");
    on.end();
  });
  res.on("error", () => {
    client.destroy();
    on.fail();
  });
}

/** Sends the handshake's body upstream (exactly `bodyBytes`), leaving whatever follows unread in `client`. */
function sendBody(client: Socket | Duplex, upReq: ClientRequest, bodyBytes: number): void {
  let left = bodyBytes;
  if (left === 0) upReq.end();
  else {
    const onData = (chunk: Buffer): void => {
      const take = Math.min(left, chunk.length);
      upReq.write(chunk.subarray(0, take));
      left -= take;
      if (left === 0) {
        client.off("data", onData);
        client.pause();
        if (take < chunk.length) client.unshift(chunk.subarray(take));
        upReq.end();
      }
    };
    client.on("data", onData);
    client.resume();
  }
}

/** The handshake's request to the upstream (no agent: the connection becomes the tunnel). */
function openUpstream(
  req: IncomingMessage,
  target: string,
  clientIp: ClientIp,
  requestId: string,
  to: UpgradeTarget,
): ClientRequest {
  const u = to.upstream;
  const host = u.hostname.startsWith("[") ? u.hostname.slice(1, -1) : u.hostname;
  const secure = u.protocol === "https:";
  const upReq: ClientRequest = (secure ? httpsRequest : httpRequest)({
    host,
    port: Number(u.port || (secure ? 443 : 80)),
    method: req.method ?? "GET",
    path: upstreamPath(to.prefix, target),
    headers: upstreamHeaders(req, clientIp, requestId, true, to.identity),
    setHost: false,
    agent: false,
    servername: secure && host === u.hostname ? host : undefined,
  });
  upReq.setNoDelay(true);
  return upReq;
}
