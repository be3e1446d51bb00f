/**
 * Client-IP resolution through trusted proxies, the way `proxy-addr` walks
 * (socket, then X-Forwarded-For right to left, stopping at the first untrusted
 * hop), but with the strict parser: a garbage or loosely written entry is never
 * trusted and never read as some other address.
 */
import { formatIp, IpError, parseCidr, parseIp, type Cidr, type Ip } from "../ip/address.js";
import { compileMatcher } from "../ip/matcher.js";

/** Decides whether hop `index` (0 = socket peer) with address `ip` (undefined when unparseable) is a trusted proxy. */
export type Trust = (ip: Ip | undefined, index: number) => boolean;

/** The ranges behind proxy-addr's names. */
export const TRUST_NAMES: Readonly<Record<string, readonly string[]>> = {
  loopback: ["127.0.0.0/8", "::1/128"],
  linklocal: ["169.254.0.0/16", "fe80::/10"],
  uniquelocal: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
};

/** A compiled `trusted_proxies` setting plus what it means, for warnings and logs. */
export interface CompiledTrust {
  readonly trust: Trust;
  /** True when nothing is trusted: X-Forwarded-For is then never read. */
  readonly none: boolean;
  /** Canonical ranges trusted (empty for a hop count). */
  readonly ranges: readonly string[];
  /** Entries that trust every address of a family (0.0.0.0/0, ::/0). */
  readonly catchAll: readonly string[];
}

/** One rejected `trusted_proxies` entry. */
export interface TrustProblem {
  readonly index: number;
  readonly value: unknown;
  readonly reason: string;
}

/** Compiles `trusted_proxies` (names, addresses, CIDRs, or a hop count) once; returns every problem when invalid. */
export function compileTrust(setting: readonly unknown[] | number): CompiledTrust | TrustProblem[] {
  if (typeof setting === "number") {
    const hops = setting;
    return {
      trust: (_ip, index) => index < hops,
      none: hops === 0,
      ranges: [],
      catchAll: [],
    };
  }
  const problems: TrustProblem[] = [];
  const cidrs: Cidr[] = [];
  const ranges: string[] = [];
  const catchAll: string[] = [];
  setting.forEach((value, index) => {
    if (typeof value !== "string") {
      problems.push({ index, value, reason: "must be a string: a name, an address or a CIDR range" });
      return;
    }
    const named = TRUST_NAMES[value];
    for (const text of named ?? [value]) {
      const c = parseCidr(text, true);
      if (c instanceof IpError) {
        const looksLikeName = /^[A-Za-z_-]+$/.test(value);
        problems.push({
          index,
          value,
          reason: looksLikeName ? `unknown name; names accepted: ${Object.keys(TRUST_NAMES).join(", ")}` : c.reason,
        });
        return;
      }
      cidrs.push(c);
      ranges.push(text);
      if (c.prefix === 0) catchAll.push(value);
    }
  });
  if (problems.length > 0) return problems;
  const matcher = compileMatcher(cidrs);
  return {
    trust: (ip) => ip !== undefined && matcher.contains(ip),
    none: cidrs.length === 0,
    ranges,
    catchAll,
  };
}

/** The socket peer and the resolved client, kept apart. */
export interface ClientIp {
  /** Socket peer address, canonical when parseable. */
  readonly peer: string;
  /** The resolved client address, or undefined when its text is not a strict address. */
  readonly ip: Ip | undefined;
  /** The resolved client's text: canonical when parsed, the raw entry otherwise. */
  readonly text: string;
  /** Whether the socket peer is a trusted proxy (then X-Forwarded-Proto/-Host are kept). */
  readonly peerTrusted: boolean;
  /** The X-Forwarded-For value it was resolved from, as received (forwarding extends it). */
  readonly forwardedFor: string | undefined;
}

interface Hop {
  readonly ip: Ip | undefined;
  readonly text: string;
}

function hop(raw: string): Hop {
  const ip = parseIp(raw);
  if (ip === undefined) return { ip, text: raw };
  // The strict parser reads a dotted quad only in its canonical form, so that text is
  // already what formatIp would write (mapped IPv6 forms, with a colon, are formatted).
  return { ip, text: ip.family === 4 && !raw.includes(":") ? raw : formatIp(ip) };
}

/**
 * Splits an X-Forwarded-For value (repeated header lines already joined with
 * commas) into entries, right-most first; empty entries and optional
 * whitespace around commas are skipped, as proxy-addr does.
 */
export function forwardedEntries(header: string): string[] {
  const out: string[] = [];
  let end = header.length;
  for (let i = header.length - 1; i >= -1; i--) {
    if (i === -1 || header.charCodeAt(i) === 44) {
      let s = i + 1;
      let e = end;
      while (s < e && isOws(header.charCodeAt(s))) s++;
      while (e > s && isOws(header.charCodeAt(e - 1))) e--;
      if (e > s) out.push(header.slice(s, e));
      end = i;
    }
  }
  return out;
}

function isOws(c: number): boolean {
  return c === 32 || c === 9;
}

/** A connection's socket peer, read once: the same for every request the connection carries. */
export interface Peer {
  /** The peer address, undefined when its text is not a strict address. */
  readonly ip: Ip | undefined;
  /** Canonical when parsed, the raw text otherwise. */
  readonly text: string;
  /** Whether the peer is a trusted proxy (hop 0 of the resolution). */
  readonly trusted: boolean;
}

/** Reads the socket peer `peerRaw` and whether `trust` trusts it. */
export function peerOf(peerRaw: string | undefined, trust: CompiledTrust): Peer {
  const peer = hop(peerRaw ?? "");
  return { ip: peer.ip, text: peer.text, trusted: !trust.none && trust.trust(peer.ip, 0) };
}

/** Resolves the client address from a peer read by {@link peerOf} with the same `trust`, and X-Forwarded-For. */
export function resolveFromPeer(peer: Peer, forwardedFor: string | undefined, trust: CompiledTrust): ClientIp {
  if (!peer.trusted) {
    return { peer: peer.text, ip: peer.ip, text: peer.text, peerTrusted: false, forwardedFor };
  }
  let current: Hop = peer;
  if (forwardedFor !== undefined) {
    const entries = forwardedEntries(forwardedFor);
    for (let k = 0; k < entries.length; k++) {
      current = hop(entries[k] as string);
      if (k === entries.length - 1 || !trust.trust(current.ip, k + 1)) break;
    }
  }
  return { peer: peer.text, ip: current.ip, text: current.text, peerTrusted: true, forwardedFor };
}

/** Resolves the client address from the socket peer and X-Forwarded-For. */
export function resolveClientIp(
  peerRaw: string | undefined,
  forwardedFor: string | undefined,
  trust: CompiledTrust,
): ClientIp {
  return resolveFromPeer(peerOf(peerRaw, trust), forwardedFor, trust);
}
