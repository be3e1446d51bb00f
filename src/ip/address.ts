/**
 * Strict parsing and canonical formatting of IPv4/IPv6 addresses and CIDR ranges.
 *
 * One parser serves list entries (at load and write time) and client addresses
 * (per request). It accepts only the forms an operator means literally:
 * four-part decimal IPv4 without leading zeros, RFC 4291 IPv6 text (with an
 * optional dotted IPv4 tail), and `/prefix` in plain decimal. IPv4-mapped IPv6
 * (`::ffff:a.b.c.d`, `::ffff:xxxx:xxxx`) becomes IPv4, so both spellings are
 * the same address everywhere.
 */

/** A parsed address; IPv4 keeps its value in `w3`, IPv6 spreads 128 bits over `w0`..`w3` (most significant first). */
export interface Ip {
  readonly family: 4 | 6;
  readonly w0: number;
  readonly w1: number;
  readonly w2: number;
  readonly w3: number;
}

/** A parsed range: `ip` is the network address (host bits clear), `prefix` counts within the family (0–32 or 0–128). */
export interface Cidr {
  readonly ip: Ip;
  readonly prefix: number;
}

/** Why an input is not an acceptable address or range; `message` quotes the input. */
export class IpError {
  constructor(
    readonly input: string,
    readonly reason: string,
    /** For host-bits errors: the network that was probably meant, canonical. */
    readonly suggestion?: string,
  ) {}

  get message(): string {
    return `${JSON.stringify(this.input)} is not a valid IP address or CIDR range: ${this.reason}`;
  }
}

function v4(value: number): Ip {
  return { family: 4, w0: 0, w1: 0, w2: 0, w3: value >>> 0 };
}

function v6(w0: number, w1: number, w2: number, w3: number): Ip {
  // IPv4-mapped IPv6 (::ffff:0:0/96) is the IPv4 address itself.
  if (w0 === 0 && w1 === 0 && w2 === 0xffff) return v4(w3);
  return { family: 6, w0: w0 >>> 0, w1: w1 >>> 0, w2: w2 >>> 0, w3: w3 >>> 0 };
}

/** Parses s[start, end) as strict dotted-quad IPv4; returns the value or -1. */
function scanV4(s: string, start: number, end: number): number {
  let value = 0;
  let parts = 0;
  let i = start;
  while (parts < 4) {
    const partStart = i;
    let part = 0;
    while (i < end) {
      const c = s.charCodeAt(i);
      if (c < 48 || c > 57) break;
      part = part * 10 + (c - 48);
      i++;
      if (i - partStart > 3) return -1;
    }
    const len = i - partStart;
    if (len === 0 || part > 255) return -1;
    if (len > 1 && s.charCodeAt(partStart) === 48) return -1;
    value = value * 256 + part;
    parts++;
    if (parts < 4) {
      if (i >= end || s.charCodeAt(i) !== 46) return -1;
      i++;
    }
  }
  return i === end ? value : -1;
}

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

// The core's one piece of module state: a scratch array that scanV6 fills and
// fill() reads within the same synchronous call, so no value survives a call
// and nothing can interleave (it saves an allocation per IPv6 parse).
const groups = new Array<number>(8);

/** Parses s[start, end) as RFC 4291 IPv6 text; returns the address or undefined. */
function scanV6(s: string, start: number, end: number): Ip | undefined {
  let count = 0; // groups written
  let gap = -1; // index in `groups` where "::" stands
  let i = start;
  if (i + 1 < end && s.charCodeAt(i) === 58 && s.charCodeAt(i + 1) === 58) {
    gap = 0;
    i += 2;
    if (i === end) return fill(gap, count);
  } else if (i < end && s.charCodeAt(i) === 58) {
    return undefined;
  }
  while (i < end) {
    if (count >= 8) return undefined;
    const groupStart = i;
    let value = 0;
    while (i < end) {
      const h = hexValue(s.charCodeAt(i));
      if (h < 0) break;
      value = value * 16 + h;
      i++;
    }
    const len = i - groupStart;
    if (i < end && s.charCodeAt(i) === 46) {
      // A dotted IPv4 tail stands for the last two groups.
      if (count > 6) return undefined;
      const tail = scanV4(s, groupStart, end);
      if (tail < 0) return undefined;
      groups[count++] = tail >>> 16;
      groups[count++] = tail & 0xffff;
      i = end;
      break;
    }
    if (len === 0 || len > 4) return undefined;
    groups[count++] = value;
    if (i === end) break;
    if (s.charCodeAt(i) !== 58) return undefined;
    i++;
    if (i < end && s.charCodeAt(i) === 58) {
      if (gap >= 0) return undefined;
      gap = count;
      i++;
      if (i === end) break;
    } else if (i === end) {
      return undefined; // trailing single colon
    }
  }
  if (gap < 0 ? count !== 8 : count > 7) return undefined;
  return fill(gap, count);
}

function fill(gap: number, count: number): Ip {
  const out = [0, 0, 0, 0, 0, 0, 0, 0];
  if (gap < 0) {
    for (let k = 0; k < 8; k++) out[k] = groups[k] ?? 0;
  } else {
    for (let k = 0; k < gap; k++) out[k] = groups[k] ?? 0;
    const tail = count - gap;
    for (let k = 0; k < tail; k++) out[8 - tail + k] = groups[gap + k] ?? 0;
  }
  const g = (k: number): number => out[k] ?? 0;
  return v6(g(0) * 65536 + g(1), g(2) * 65536 + g(3), g(4) * 65536 + g(5), g(6) * 65536 + g(7));
}

function scanAddress(s: string, start: number, end: number): Ip | undefined {
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c === 58) return scanV6(s, start, end);
    if (c === 46) break;
  }
  const value = scanV4(s, start, end);
  return value < 0 ? undefined : v4(value);
}

/**
 * Parses one address strictly (hot path): returns the canonical-family address,
 * or undefined for anything else (use {@link explainAddress} for the reason).
 */
export function parseIp(s: string): Ip | undefined {
  // One pass for the usual case, a strict dotted quad. Anything else (IPv6,
  // garbage, or a dotted quad that breaks a rule) goes to the general scanner,
  // which gives the answer: this path only ever says yes, to strings of four
  // 1-3 digit parts without leading zeros, each at most 255.
  const end = s.length;
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  let lead = 0;
  for (let i = 0; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || dots === 3) return scanAddress(s, 0, end);
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
      continue;
    }
    const d = c - 48;
    if (d < 0 || d > 9) return scanAddress(s, 0, end);
    if (digits === 0) lead = d;
    else if (lead === 0) return scanAddress(s, 0, end);
    part = part * 10 + d;
    if (++digits > 3 || part > 255) return scanAddress(s, 0, end);
  }
  return dots === 3 && digits > 0 ? v4(value * 256 + part) : scanAddress(s, 0, end);
}

const WHITESPACE = /\s/;

/** Says why `s` is not an address (or returns undefined when it is one). */
export function explainAddress(s: string): IpError | undefined {
  if (parseIp(s) !== undefined) return undefined;
  const fail = (reason: string): IpError => new IpError(s, reason);
  if (s.length === 0) return fail("empty");
  if (WHITESPACE.test(s)) return fail("whitespace is not accepted");
  if (s.includes("%")) return fail("zone IDs are not accepted");
  if (s.startsWith("[") || s.endsWith("]")) return fail("brackets are not accepted");
  if (s.includes("/")) return fail("a range is not accepted here, only a single address");
  if (/^[0-9.]+:[0-9]+$/.test(s)) return fail("ports are not accepted");
  if (/^[0-9]+$/.test(s)) return fail("integer notation is not accepted; use four decimal parts");
  if (/0x/i.test(s) && !s.includes(":")) return fail("hexadecimal notation is not accepted");
  if (!s.includes(":")) {
    if (!/^[0-9.]+$/.test(s)) return fail("not an IP address");
    const parts = s.split(".");
    if (parts.some((p) => p === "")) return fail("empty part (leading, trailing or double dot)");
    if (parts.length !== 4) {
      return fail(
        `an IPv4 address has exactly four decimal parts, this has ${parts.length} (short forms like 127.1 are not accepted)`,
      );
    }
    for (const p of parts) {
      if (p.length > 1 && p.startsWith("0")) {
        return fail(`part "${p}" has a leading zero (octal notation is not accepted)`);
      }
      if (Number(p) > 255) return fail(`part "${p}" is greater than 255`);
    }
    return fail("not an IPv4 address");
  }
  if (/^[0-9.]+:[0-9]+$/.test(s)) return fail("ports are not accepted");
  if ((s.match(/::/g) ?? []).length > 1) return fail('"::" may appear only once');
  if (/:::/.test(s)) return fail('":::" is not valid');
  const tailDot = s.lastIndexOf(":");
  const tail = s.slice(tailDot + 1);
  if (tail.includes(".") && scanV4(tail, 0, tail.length) < 0) {
    return fail(`the embedded IPv4 part "${tail}" is not a strict dotted-quad address`);
  }
  const hexGroups = s.split(":").filter((g) => g !== "" && !g.includes("."));
  for (const g of hexGroups) {
    if (!/^[0-9a-fA-F]+$/.test(g)) return fail(`group "${g}" is not hexadecimal`);
    if (g.length > 4) return fail(`group "${g}" has more than four hex digits`);
  }
  return fail("not a valid IPv6 address (wrong number of groups or misplaced colons)");
}

function maskWord(word: number, bitsInWord: number): number {
  if (bitsInWord <= 0) return 0;
  if (bitsInWord >= 32) return word >>> 0;
  return (word & (~0 << (32 - bitsInWord))) >>> 0;
}

/** Clears every bit of `ip` beyond `prefix`. */
export function networkOf(ip: Ip, prefix: number): Ip {
  if (ip.family === 4) return v4(maskWord(ip.w3, prefix));
  return {
    family: 6,
    w0: maskWord(ip.w0, prefix),
    w1: maskWord(ip.w1, prefix - 32),
    w2: maskWord(ip.w2, prefix - 64),
    w3: maskWord(ip.w3, prefix - 96),
  };
}

function sameIp(a: Ip, b: Ip): boolean {
  return a.family === b.family && a.w0 === b.w0 && a.w1 === b.w1 && a.w2 === b.w2 && a.w3 === b.w3;
}

/** Parses a prefix length in plain decimal (no sign, no leading zero); -1 when malformed. */
function scanPrefix(s: string): number {
  if (s.length === 0 || s.length > 3) return -1;
  if (s.length > 1 && s.charCodeAt(0) === 48) return -1;
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return -1;
    n = n * 10 + (c - 48);
  }
  return n;
}

/**
 * Parses an allow-list or trusted-proxy entry: an address or a CIDR range.
 * Mapped IPv6 ranges with prefix ≥ 96 become IPv4 ranges; host bits set are an
 * error, and so are catch-all ranges unless `allowCatchAll` (trusted proxies,
 * where the caller warns instead).
 */
export function parseCidr(s: string, allowCatchAll = false): Cidr | IpError {
  const slash = s.indexOf("/");
  if (slash < 0) {
    const ip = parseIp(s);
    if (ip === undefined) return explainAddress(s) ?? new IpError(s, "not an IP address");
    return { ip, prefix: ip.family === 4 ? 32 : 128 };
  }
  const addrText = s.slice(0, slash);
  const prefixText = s.slice(slash + 1);
  const ip = parseIp(addrText);
  if (ip === undefined) {
    const inner = explainAddress(addrText);
    return new IpError(s, inner ? `address part: ${inner.reason}` : "not an IP address");
  }
  const written = scanPrefix(prefixText);
  if (written < 0) {
    return new IpError(
      s,
      `prefix length "${prefixText}" must be a plain decimal number without sign or leading zeros (netmask notation is not accepted)`,
    );
  }
  // A mapped address was written in IPv6 text: its prefix counts 128 bits.
  const writtenAsV6 = addrText.includes(":");
  const max = writtenAsV6 ? 128 : 32;
  if (written > max) return new IpError(s, `prefix length /${written} is out of range (0–${max})`);
  let prefix = written;
  let addr = ip;
  if (writtenAsV6 && ip.family === 4) {
    if (written >= 96) {
      prefix = written - 96;
    } else {
      // A range wider than the mapped block stays an IPv6 range.
      addr = { family: 6, w0: 0, w1: 0, w2: 0xffff, w3: ip.w3 };
    }
  }
  if (prefix === 0 && !allowCatchAll) {
    return new IpError(s, "a catch-all range is not accepted: an empty list already means no restriction");
  }
  const network = networkOf(addr, prefix);
  if (!sameIp(network, addr)) {
    const meant = formatCidr({ ip: network, prefix });
    return new IpError(s, `host bits are set; did you mean ${meant}?`, meant);
  }
  return { ip: addr, prefix };
}

/** Formats an address canonically: dotted IPv4, RFC 5952 IPv6 (lowercase, longest zero run compressed). */
export function formatIp(ip: Ip): string {
  if (ip.family === 4) {
    const n = ip.w3;
    return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
  }
  const g = [
    ip.w0 >>> 16,
    ip.w0 & 0xffff,
    ip.w1 >>> 16,
    ip.w1 & 0xffff,
    ip.w2 >>> 16,
    ip.w2 & 0xffff,
    ip.w3 >>> 16,
    ip.w3 & 0xffff,
  ];
  let bestStart = -1;
  let bestLen = 1; // RFC 5952 4.2.2: a single zero group is not compressed
  for (let k = 0; k < 8;) {
    if (g[k] !== 0) {
      k++;
      continue;
    }
    let end = k;
    while (end < 8 && g[end] === 0) end++;
    if (end - k > bestLen) {
      bestStart = k;
      bestLen = end - k;
    }
    k = end;
  }
  const hex = (parts: number[]): string => parts.map((p) => p.toString(16)).join(":");
  if (bestStart < 0) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLen))}`;
}

/** Formats a range canonically; full-length prefixes (/32, /128) are dropped. */
export function formatCidr(c: Cidr): string {
  const max = c.ip.family === 4 ? 32 : 128;
  return c.prefix === max ? formatIp(c.ip) : `${formatIp(c.ip)}/${c.prefix}`;
}

/** Returns the canonical text of an entry, or the error that rejects it. */
export function canonicalEntry(s: string): string | IpError {
  const c = parseCidr(s);
  return c instanceof IpError ? c : formatCidr(c);
}

/**
 * What a per-address limit counts the address `text` (parsed: `ip`) as: an
 * IPv6 address's network of `v6prefix` bits (64 by default: one host or site
 * is handed a whole /64, and counting single addresses would let one client
 * hold any number of slots); an IPv4 address (mapped ones included), an IPv6
 * one with `v6prefix` 128, and text that is no address, as itself.
 */
export function limitKey(text: string, ip: Ip | undefined = parseIp(text), v6prefix = 64): string {
  if (ip === undefined || ip.family === 4 || v6prefix >= 128) return text;
  return formatCidr({ ip: networkOf(ip, v6prefix), prefix: v6prefix });
}
