import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { formatIp, IpError, parseCidr, parseIp, type Cidr, type Ip } from "../../src/ip/address.js";
import { parseAllowList } from "../../src/ip/list.js";
import { compileMatcher } from "../../src/ip/matcher.js";

function cidrs(entries: string[]): Cidr[] {
  return entries.map((e) => {
    const c = parseCidr(e);
    if (c instanceof IpError) throw new Error(c.message);
    return c;
  });
}

function ip(s: string): Ip {
  const r = parseIp(s);
  if (!r) throw new Error(`bad test address ${s}`);
  return r;
}

/** Naive reference: scan every range, compare masked 128-bit values. */
function naiveContains(list: Cidr[], addr: Ip): boolean {
  const value = (x: Ip): bigint => (BigInt(x.w0) << 96n) | (BigInt(x.w1) << 64n) | (BigInt(x.w2) << 32n) | BigInt(x.w3);
  return list.some((c) => {
    if (c.ip.family !== addr.family) return false;
    const bits = BigInt(addr.family === 4 ? 32 : 128);
    const shift = bits - BigInt(c.prefix);
    return value(c.ip) >> shift === value(addr) >> shift;
  });
}

describe("matcher: tables", () => {
  const cases: Array<{ desc: string; allow: string[]; pass: string[]; reject: string[] }> = [
    {
      desc: "single IPv4 address",
      allow: ["203.0.113.4"],
      pass: ["203.0.113.4", "::ffff:203.0.113.4", "::ffff:cb00:7104"],
      reject: ["203.0.113.3", "203.0.113.5", "::203.0.113.4", "2001:db8::1"],
    },
    {
      desc: "IPv4 /24 edges",
      allow: ["198.51.100.0/24"],
      pass: ["198.51.100.0", "198.51.100.255", "198.51.100.128"],
      reject: ["198.51.99.255", "198.51.101.0"],
    },
    {
      desc: "IPv4 /1 and /31",
      allow: ["128.0.0.0/1", "10.0.0.2/31"],
      pass: ["128.0.0.0", "255.255.255.255", "10.0.0.2", "10.0.0.3"],
      reject: ["127.255.255.255", "10.0.0.1", "10.0.0.4", "0.0.0.0"],
    },
    {
      desc: "IPv6 single and /48",
      allow: ["2001:db8::1", "2001:db8:ff::/48"],
      pass: ["2001:db8::1", "2001:0db8:0000::0001", "2001:db8:ff::", "2001:db8:ff:ffff:ffff:ffff:ffff:ffff"],
      reject: ["2001:db8::2", "2001:db8:fe:ffff:ffff:ffff:ffff:ffff", "2001:db8:100::", "1.2.3.4"],
    },
    {
      desc: "IPv6 extremes /1 and /127",
      allow: ["8000::/1", "::2/127"],
      pass: ["8000::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::2", "::3"],
      reject: ["7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::1", "::4"],
    },
    {
      desc: "a wide IPv6 range never admits IPv4 clients",
      allow: ["::/8", "::/1"],
      pass: ["::1", "ff::"],
      reject: ["1.2.3.4", "::ffff:1.2.3.4", "127.0.0.1"],
    },
    {
      desc: "mapped entry admits IPv4 and mapped clients",
      allow: ["::ffff:203.0.113.0/120"],
      pass: ["203.0.113.0", "203.0.113.255", "::ffff:203.0.113.9"],
      reject: ["203.0.114.0", "2001:db8::1"],
    },
    {
      desc: "overlapping and adjacent ranges merge",
      allow: ["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.0.7"],
      pass: ["10.0.0.0", "10.0.1.255", "10.0.0.200"],
      reject: ["10.0.2.0", "9.255.255.255"],
    },
    {
      desc: "IPv4 top of the address space",
      allow: ["255.255.255.255", "255.255.255.0/31"],
      pass: ["255.255.255.255", "255.255.255.1"],
      reject: ["255.255.255.254", "255.255.255.2"],
    },
  ];
  for (const c of cases) {
    test(c.desc, () => {
      const list = cidrs(c.allow);
      const m = compileMatcher(list);
      for (const p of c.pass) assert.equal(m.contains(ip(p)), true, `${p} should pass ${c.allow.join(",")}`);
      for (const r of c.reject)
        assert.equal(m.contains(ip(r)), false, `${r} should be rejected by ${c.allow.join(",")}`);
      for (const a of [...c.pass, ...c.reject]) assert.equal(m.contains(ip(a)), naiveContains(list, ip(a)));
    });
  }

  test("an empty matcher admits nothing", () => {
    const m = compileMatcher([]);
    assert.equal(m.contains(ip("1.2.3.4")), false);
    assert.equal(m.contains(ip("::1")), false);
  });
});

const v4Cidr = fc.tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 1, max: 32 })).map(([v, p]) => {
  const masked = p === 32 ? v : (v & (~0 << (32 - p))) >>> 0;
  return `${formatIp({ family: 4, w0: 0, w1: 0, w2: 0, w3: masked >>> 0 })}/${p}`;
});
const word = fc.integer({ min: 0, max: 0xffffffff });
const v6Words = fc.tuple(word, word, word, word);
function maskWords(w: [number, number, number, number], prefix: number): Ip {
  const m = (x: number, bits: number): number => (bits <= 0 ? 0 : bits >= 32 ? x : (x & (~0 << (32 - bits))) >>> 0);
  return {
    family: 6,
    w0: m(w[0], prefix),
    w1: m(w[1], prefix - 32),
    w2: m(w[2], prefix - 64),
    w3: m(w[3], prefix - 96),
  };
}
const v6Cidr = fc.tuple(v6Words, fc.integer({ min: 1, max: 128 })).map(([w, p]) => `${formatIp(maskWords(w, p))}/${p}`);
const mappedCidr = fc.tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 1, max: 32 })).map(([v, p]) => {
  const masked = p === 32 ? v : (v & (~0 << (32 - p))) >>> 0;
  const hex = (masked >>> 0).toString(16).padStart(8, "0");
  return `::ffff:${hex.slice(0, 4)}:${hex.slice(4)}/${p + 96}`;
});

describe("matcher: property against a naive scan", () => {
  test("random lists (IPv4, IPv6, mapped) and random nearby addresses agree", () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(v4Cidr, v6Cidr, mappedCidr), { minLength: 0, maxLength: 40 }),
        fc.array(
          fc.oneof(
            fc.integer({ min: 0, max: 0xffffffff }).map((v) => ({ family: 4 as const, v })),
            v6Words,
          ),
          {
            minLength: 1,
            maxLength: 40,
          },
        ),
        (entries, probes) => {
          const list = cidrs(entries.filter((e) => !(parseCidr(e) instanceof IpError)));
          const m = compileMatcher(list);
          const addrs: Ip[] = probes.map((p) =>
            Array.isArray(p)
              ? (parseIp(formatIp(maskWords(p, 128))) as Ip)
              : { family: 4, w0: 0, w1: 0, w2: 0, w3: p.v },
          );
          // Also probe each range's first and last address and their neighbours.
          for (const c of list) {
            const size = c.ip.family === 4 ? 32 : 128;
            const base =
              c.ip.family === 4
                ? BigInt(c.ip.w3)
                : (BigInt(c.ip.w0) << 96n) | (BigInt(c.ip.w1) << 64n) | (BigInt(c.ip.w2) << 32n) | BigInt(c.ip.w3);
            const last = base + (1n << BigInt(size - c.prefix)) - 1n;
            const max = (1n << BigInt(size)) - 1n;
            for (const v of [base - 1n, base, last, last + 1n]) {
              if (v < 0n || v > max) continue;
              if (c.ip.family === 4) addrs.push({ family: 4, w0: 0, w1: 0, w2: 0, w3: Number(v) });
              else {
                const w = [96n, 64n, 32n, 0n].map((s) => Number((v >> s) & 0xffffffffn)) as [
                  number,
                  number,
                  number,
                  number,
                ];
                addrs.push(parseIp(formatIp(maskWords(w, 128))) as Ip);
              }
            }
          }
          for (const a of addrs) {
            assert.equal(m.contains(a), naiveContains(list, a), `${formatIp(a)} vs [${entries.join(", ")}]`);
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe("parseAllowList", () => {
  test("duplicates merge across spellings; canonical order of first appearance", () => {
    const r = parseAllowList([
      "203.0.113.4",
      "::ffff:203.0.113.4",
      "203.0.113.4/32",
      "2001:DB8::1",
      "2001:db8:0::1/128",
    ]);
    assert.ok(!Array.isArray(r));
    assert.deepEqual(r.entries, ["203.0.113.4", "2001:db8::1"]);
  });

  test("every bad entry is reported with its index", () => {
    const r = parseAllowList(["1.2.3.4", "300.1.2.3", 7, "198.51.100.7/24", "0.0.0.0/0"]);
    assert.ok(Array.isArray(r));
    assert.deepEqual(
      r.map((p) => p.index),
      [1, 2, 3, 4],
    );
    assert.match(r[2]?.reason ?? "", /did you mean 198\.51\.100\.0\/24/);
  });

  test("max_entries counts after duplicates merge", () => {
    assert.ok(!Array.isArray(parseAllowList(["1.1.1.1", "1.1.1.1", "::ffff:1.1.1.1"], 1)));
    const r = parseAllowList(["1.1.1.1", "1.1.1.2"], 1);
    assert.ok(Array.isArray(r));
    assert.equal(r[0]?.index, null);
    assert.match(r[0]?.reason ?? "", /more than the limit of 1/);
  });
});
