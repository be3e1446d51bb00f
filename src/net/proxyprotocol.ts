/**
 * The PROXY protocol (SPEC §7; HAProxy's doc/proxy-protocol.txt), v1 (text)
 * and v2 (binary), told apart by their first byte: a pure parser of the
 * header, and the connection prelude that reads it before HTTP sees the
 * connection and makes its source address the connection's peer address.
 */
import type { Socket } from "node:net";
import { formatIp, parseIp } from "../ip/address.js";

/** How long a listed peer has to send its whole header. */
export const PROXY_HEADER_TIMEOUT_MS = 5_000;

/** The v2 signature (12 bytes). */
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_PREFIX = Buffer.from("PROXY ", "latin1");
/** v1: the longest line, CRLF included. */
const V1_MAX = 107;

/** The source of a proxied connection, canonical (a mapped IPv6 address becomes IPv4). */
export interface ProxySource {
  readonly address: string;
  readonly port: number;
  readonly family: "IPv4" | "IPv6";
}

/** What the bytes received so far make of a header. */
export type ProxyHeader =
  /** Too few bytes yet to decide. */
  | { readonly kind: "incomplete" }
  /** Not a valid header: the connection is closed. */
  | { readonly kind: "invalid"; readonly reason: string }
  /**
   * A complete header of `length` bytes: `source` is the client it names, or
   * undefined for v1 UNKNOWN, v2 LOCAL and v2 families without an address
   * (the socket's own address then stands).
   */
  | { readonly kind: "header"; readonly version: 1 | 2; readonly length: number; readonly source?: ProxySource };

const INCOMPLETE: ProxyHeader = { kind: "incomplete" };

function invalid(reason: string): ProxyHeader {
  return { kind: "invalid", reason };
}

/** Parses the PROXY protocol header at the start of `buf` (all bytes received so far). */
export function parseProxyHeader(buf: Buffer): ProxyHeader {
  if (buf.length === 0) return INCOMPLETE;
  if (buf[0] === 0x50) return parseV1(buf);
  if (buf[0] === 0x0d) return parseV2(buf);
  return invalid("no PROXY protocol header");
}

/** True when the first `n` bytes of `buf` equal those of `prefix`. */
function startsLike(buf: Buffer, prefix: Buffer, n: number): boolean {
  return buf.compare(prefix, 0, n, 0, n) === 0;
}

const PORT = /^(?:0|[1-9][0-9]{0,4})$/;

function parseV1(buf: Buffer): ProxyHeader {
  const n = Math.min(buf.length, V1_PREFIX.length);
  if (!startsLike(buf, V1_PREFIX, n)) return invalid("no PROXY protocol header");
  const end = buf.indexOf("\r\n", 0, "latin1");
  if (end < 0 || end + 2 > V1_MAX) {
    if (buf.length >= V1_MAX) return invalid("v1 header without CRLF within 107 bytes");
    // A lone CR or LF never ends the line.
    const lf = buf.indexOf(0x0a);
    if (lf >= 0) return invalid("v1 header line not ended by CRLF");
    return INCOMPLETE;
  }
  const line = buf.toString("latin1", V1_PREFIX.length, end);
  const length = end + 2;
  if (line === "UNKNOWN" || line.startsWith("UNKNOWN ")) return { kind: "header", version: 1, length };
  const parts = line.split(" ");
  if (parts.length !== 5) return invalid("v1 header must be PROXY TCP4|TCP6|UNKNOWN SRC DST SPORT DPORT");
  const [proto, src, dst, sport, dport] = parts as [string, string, string, string, string];
  if (proto !== "TCP4" && proto !== "TCP6")
    return invalid(`v1 protocol ${JSON.stringify(proto)} is not TCP4, TCP6 or UNKNOWN`);
  const v6 = proto === "TCP6";
  const source = v1Address(src, v6);
  if (source === undefined || v1Address(dst, v6) === undefined) {
    return invalid(`v1 ${proto} header with an address that is not a strict ${v6 ? "IPv6" : "IPv4"} address`);
  }
  if (!PORT.test(sport) || !PORT.test(dport) || Number(sport) > 65535 || Number(dport) > 65535) {
    return invalid("v1 header with a port that is not a decimal from 0 to 65535 without leading zeros");
  }
  const ip = parseIp(source);
  return {
    kind: "header",
    version: 1,
    length,
    source: { address: source, port: Number(sport), family: ip?.family === 4 ? "IPv4" : "IPv6" },
  };
}

/** The canonical form of a v1 address of the announced family, or undefined. */
function v1Address(text: string, v6: boolean): string | undefined {
  if (text.includes(":") !== v6) return undefined;
  const ip = parseIp(text);
  return ip === undefined ? undefined : formatIp(ip);
}

function parseV2(buf: Buffer): ProxyHeader {
  const n = Math.min(buf.length, V2_SIGNATURE.length);
  if (!startsLike(buf, V2_SIGNATURE, n)) return invalid("no PROXY protocol header");
  if (buf.length < 16) return INCOMPLETE;
  const verCmd = buf[12] as number;
  if (verCmd >> 4 !== 2) return invalid(`v2 header with version ${verCmd >> 4}`);
  const command = verCmd & 0x0f;
  if (command > 1) return invalid(`v2 header with unknown command ${command}`);
  const famProto = buf[13] as number;
  const family = famProto >> 4;
  const proto = famProto & 0x0f;
  if (family > 3 || proto > 2) return invalid(`v2 header with unknown family and protocol 0x${famProto.toString(16)}`);
  const length = 16 + buf.readUInt16BE(14);
  const need = family === 1 ? 12 : family === 2 ? 36 : family === 3 ? 216 : 0;
  if (command === 1 && proto !== 0 && length - 16 < need) {
    return invalid(`v2 header too short for its addresses (${length - 16} bytes)`);
  }
  if (buf.length < length) return INCOMPLETE;
  // LOCAL (health checks), and families without an IP address, keep the socket's address.
  if (command === 0 || proto !== 1 || (family !== 1 && family !== 2)) return { kind: "header", version: 2, length };
  let text: string;
  let port: number;
  if (family === 1) {
    text = `${buf[16]}.${buf[17]}.${buf[18]}.${buf[19]}`;
    port = buf.readUInt16BE(24);
  } else {
    const groups: string[] = [];
    for (let i = 0; i < 8; i++) groups.push(buf.readUInt16BE(16 + 2 * i).toString(16));
    text = groups.join(":");
    port = buf.readUInt16BE(48);
  }
  const ip = parseIp(text);
  if (ip === undefined) return invalid("v2 header with an unreadable address");
  return {
    kind: "header",
    version: 2,
    length,
    source: { address: formatIp(ip), port, family: ip.family === 4 ? "IPv4" : "IPv6" },
  };
}

/** Why a listed peer's connection was closed before HTTP. */
export type PreludeFailure = "invalid" | "timeout" | "closed";

/**
 * Reads the PROXY header off `socket` before HTTP does: on a valid one, the
 * source it names becomes the socket's `remoteAddress`/`remotePort`/
 * `remoteFamily` (so every later reader of the socket sees the client), the
 * bytes after the header are put back, and `proceed` gets the peer address.
 * A missing, malformed or truncated header, none within `timeoutMs`, or a
 * connection reset meanwhile closes the connection without an answer and
 * calls `failed`.
 */
export function readProxyHeader(
  socket: Socket,
  timeoutMs: number,
  proceed: (peer: string) => void,
  failed: (why: PreludeFailure, reason: string) => void,
): void {
  let buf: Buffer = Buffer.alloc(0);
  let settled = false;
  const stop = (): void => {
    settled = true;
    clearTimeout(timer);
    socket.off("readable", onReadable);
    socket.off("end", onEnd);
    socket.off("close", onEnd);
    socket.off("error", onError);
  };
  const fail = (why: PreludeFailure, reason: string): void => {
    if (settled) return;
    stop();
    socket.destroy();
    failed(why, reason);
  };
  const onReadable = (): void => {
    let chunk: Buffer | null;
    while (!settled && (chunk = socket.read() as Buffer | null) !== null) {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const h = parseProxyHeader(buf);
      if (h.kind === "incomplete") continue;
      if (h.kind === "invalid") {
        fail("invalid", h.reason);
        return;
      }
      stop();
      if (buf.length > h.length) socket.unshift(buf.subarray(h.length));
      const peer = h.source === undefined ? (socket.remoteAddress ?? "") : h.source.address;
      if (h.source !== undefined) {
        Object.defineProperty(socket, "remoteAddress", { value: h.source.address, configurable: true });
        Object.defineProperty(socket, "remotePort", { value: h.source.port, configurable: true });
        Object.defineProperty(socket, "remoteFamily", { value: h.source.family, configurable: true });
      }
      proceed(peer);
    }
  };
  const onEnd = (): void => fail("closed", "connection closed before a complete PROXY protocol header");
  // No HTTP handler is attached yet to catch a reset: unheard, its 'error' event would end the process.
  const onError = (err: Error): void =>
    fail("closed", `connection failed before a complete PROXY protocol header: ${err.message}`);
  const timer = setTimeout(
    () => fail("timeout", `no complete PROXY protocol header within ${timeoutMs} ms`),
    timeoutMs,
  );
  socket.on("readable", onReadable);
  socket.on("end", onEnd);
  socket.on("close", onEnd);
  socket.on("error", onError);
}
