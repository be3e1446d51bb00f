import assert from "node:assert/strict";
import { isIPv6 } from "node:net";
import { describe, test } from "node:test";
import fc from "fast-check";
import {
  canonicalEntry,
  explainAddress,
  formatIp,
  IpError,
  limitKey,
  parseCidr,
  parseIp,
} from "../../src/ip/address.js";

describe("parseIp: accepted forms and their canonical text", () => {
  const cases: Array<[string, string]> = [
    ["0.0.0.0", "0.0.0.0"],
    ["1.2.3.4", "1.2.3.4"],
    ["255.255.255.255", "255.255.255.255"],
    ["10.0.0.1", "10.0.0.1"],
    ["::", "::"],
    ["::1", "::1"],
    ["1::", "1::"],
    ["2001:DB8::1", "2001:db8::1"],
    ["2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"], // first of equal runs
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"], // a single zero group stays
    ["2001:db8::0:1", "2001:db8::1"],
    ["1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"],
    ["::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"],
    ["fe80::1:2:3:4", "fe80::1:2:3:4"],
    ["64:ff9b::192.0.2.33", "64:ff9b::c000:221"],
    // IPv4-mapped IPv6 is the IPv4 address.
    ["::ffff:203.0.113.4", "203.0.113.4"],
    ["::FFFF:203.0.113.4", "203.0.113.4"],
    ["::ffff:cb00:7104", "203.0.113.4"],
    ["0:0:0:0:0:ffff:cb00:7104", "203.0.113.4"],
    ["::ffff:127.0.0.1", "127.0.0.1"],
  ];
  for (const [input, canonical] of cases) {
    test(`${input} -> ${canonical}`, () => {
      const ip = parseIp(input);
      assert.ok(ip, `${input} should parse`);
      assert.equal(formatIp(ip), canonical);
      assert.equal(explainAddress(input), undefined);
    });
  }
});

describe("parseIp: rejected forms, each with a reason", () => {
  const cases: Array<[string, RegExp]> = [
    ["", /empty/],
    ["300.1.2.3", /greater than 255/],
    ["256.0.0.0", /greater than 255/],
    ["1.2.3", /four decimal parts/],
    ["127.1", /four decimal parts/],
    ["1.2.3.4.5", /four decimal parts/],
    ["0x7f.0.0.1", /hexadecimal/],
    ["0x7f.1", /hexadecimal/],
    ["0177.0.0.1", /leading zero/],
    ["01.2.3.4", /leading zero/],
    ["1.2.3.04", /leading zero/],
    ["00.0.0.0", /leading zero/],
    ["2130706433", /integer notation/],
    ["1.2.3.4.", /empty part/],
    [".1.2.3.4", /empty part/],
    ["1..2.3", /empty part/],
    ["1.2.3.4:80", /ports/],
    ["[::1]", /brackets/],
    ["[::1]:80", /brackets/],
    ["fe80::1%eth0", /zone/],
    ["fe80::1%1", /zone/],
    [" 1.2.3.4", /whitespace/],
    ["1.2.3.4 ", /whitespace/],
    ["1.2.3.4\n", /whitespace/],
    ["1.2.3.4/32", /range is not accepted/],
    ["1:2:3:4:5:6:7:8:9", /IPv6/],
    ["1::2::3", /only once/],
    [":::1", /":::"/],
    [":1::", /IPv6/],
    ["1:", /IPv6/],
    ["12345::1", /more than four hex digits/],
    ["g::1", /not hexadecimal/],
    ["::ffff:01.2.3.4", /embedded IPv4/],
    ["::ffff:1.2.3", /embedded IPv4/],
    ["::1.2.3.4:5", /IPv6|embedded/],
    ["1.2.3.4::", /not an IPv4|IPv6|embedded/],
    ["localhost", /not an IP address/],
    ["１.2.3.4", /not an IP address/], // fullwidth digit
  ];
  for (const [input, reason] of cases) {
    test(JSON.stringify(input), () => {
      assert.equal(parseIp(input), undefined, `${JSON.stringify(input)} must not parse`);
      const err = explainAddress(input);
      assert.ok(err instanceof IpError);
      assert.match(err.reason, reason);
      assert.ok(err.message.includes(JSON.stringify(input)), "the message quotes the input");
    });
  }
});

describe("parseCidr: accepted entries and canonical forms", () => {
  const cases: Array<[string, string]> = [
    ["198.51.100.0/24", "198.51.100.0/24"],
    ["1.2.3.4/32", "1.2.3.4"],
    ["1.2.3.4", "1.2.3.4"],
    ["128.0.0.0/1", "128.0.0.0/1"],
    ["10.0.0.0/8", "10.0.0.0/8"],
    ["2001:db8::/32", "2001:db8::/32"],
    ["2001:DB8:0::/48", "2001:db8::/48"],
    ["2001:db8::1/128", "2001:db8::1"],
    ["8000::/1", "8000::/1"],
    ["::ffff:203.0.113.0/120", "203.0.113.0/24"],
    ["::ffff:203.0.113.4/128", "203.0.113.4"],
    ["::ffff:203.0.113.4", "203.0.113.4"],
    ["::/8", "::/8"],
  ];
  for (const [input, canonical] of cases) {
    test(`${input} -> ${canonical}`, () => {
      assert.equal(canonicalEntry(input), canonical);
      assert.equal(canonicalEntry(canonical), canonical, "canonical form is stable");
    });
  }
});

describe("parseCidr: rejected entries", () => {
  const cases: Array<[string, RegExp]> = [
    ["1.2.3.0/33", /out of range/],
    ["::/129", /out of range/],
    ["1.2.3.0/-1", /plain decimal/],
    ["1.2.3.0/033", /plain decimal/],
    ["1.2.3.0/+24", /plain decimal/],
    ["1.2.3.0/", /plain decimal/],
    ["1.2.3.0/255.255.255.0", /netmask/],
    ["1.2.3.0/24/8", /plain decimal/],
    ["/24", /empty/],
    ["::ffff:0:0/95", /did you mean ::fffe:0:0\/95\?/], // mapped text, range wider than the mapped block
    ["198.51.100.7/24", /host bits are set; did you mean 198\.51\.100\.0\/24\?/],
    ["2001:db8::1/32", /did you mean 2001:db8::\/32\?/],
    ["0.0.0.0/0", /catch-all/],
    ["::/0", /catch-all/],
    ["::ffff:0.0.0.0/96", /catch-all/],
    ["1.2.3.4/0", /catch-all/],
    ["0177.0.0.0/8", /leading zero/],
    ["10.0.0.300/8", /greater than 255/],
    ["1.2.3.0 /24", /whitespace/],
  ];
  for (const [input, reason] of cases) {
    test(JSON.stringify(input), () => {
      const r = parseCidr(input);
      assert.ok(r instanceof IpError, `${input} must be rejected`);
      assert.match(r.reason, reason);
    });
  }

  test("host-bits error carries the suggested network", () => {
    const r = parseCidr("198.51.100.7/24");
    assert.ok(r instanceof IpError);
    assert.equal(r.suggestion, "198.51.100.0/24");
  });

  test("catch-all allowed only when asked (trusted proxies)", () => {
    assert.ok(!(parseCidr("0.0.0.0/0", true) instanceof IpError));
  });
});

const octet = fc.integer({ min: 0, max: 255 });
const group = fc.integer({ min: 0, max: 0xffff });

/** Writes 8 groups as IPv6 text in one of several legal spellings. */
function spellV6(groups: number[], style: { upper: boolean; pad: boolean; compress: boolean }): string {
  const hex = groups.map((g) => {
    let s = g.toString(16);
    if (style.pad) s = s.padStart(4, "0");
    return style.upper ? s.toUpperCase() : s;
  });
  if (!style.compress) return hex.join(":");
  // Compress the first run of zero groups (any length >= 1).
  const start = groups.indexOf(0);
  if (start < 0) return hex.join(":");
  let end = start;
  while (end < 8 && groups[end] === 0) end++;
  return `${hex.slice(0, start).join(":")}::${hex.slice(end).join(":")}`;
}

describe("parseIp properties", () => {
  test("every dotted quad round-trips", () => {
    fc.assert(
      fc.property(fc.tuple(octet, octet, octet, octet), (parts) => {
        const text = parts.join(".");
        const ip = parseIp(text);
        assert.ok(ip);
        assert.equal(ip.family, 4);
        assert.equal(ip.w3, ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0);
        assert.equal(formatIp(ip), text);
      }),
      { numRuns: 2000 },
    );
  });

  test("any spelling of an IPv6 address formats like the WHATWG URL serializer (RFC 5952)", () => {
    const groups = fc.array(fc.oneof(group, fc.constant(0), fc.constant(0)), { minLength: 8, maxLength: 8 });
    fc.assert(
      fc.property(groups, fc.record({ upper: fc.boolean(), pad: fc.boolean(), compress: fc.boolean() }), (g, style) => {
        const text = spellV6(g, style);
        const ip = parseIp(text);
        assert.ok(ip, `${text} should parse`);
        const mapped = g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff;
        if (mapped) {
          assert.equal(ip.family, 4);
          return;
        }
        const reference = new URL(`http://[${text}]/`).hostname.slice(1, -1);
        assert.equal(formatIp(ip), reference);
      }),
      { numRuns: 3000 },
    );
  });

  test("accepts exactly what a strict reference accepts, over noisy strings", () => {
    const strictV4 =
      /^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$/;
    const reference = (s: string): boolean => strictV4.test(s) || (isIPv6(s) && !s.includes("%"));
    const noisy = fc.string({ unit: fc.constantFrom(..."0123456789abcdefABCDEF.:%x /f"), maxLength: 24 });
    const nearValid = fc.oneof(
      noisy,
      fc.tuple(octet, octet, octet, octet).map((p) => p.join(".")),
      fc.tuple(fc.array(group, { minLength: 8, maxLength: 8 }), fc.nat(7), fc.nat(7)).map(([g, a, b]) => {
        const s = spellV6(g, { upper: false, pad: false, compress: true });
        return s.slice(0, a) + s.slice(a + b);
      }),
      fc.tuple(octet, octet, octet, octet).map((p) => `::ffff:${p.join(".")}`),
      // Digits and dots only: parseIp's one-pass IPv4 path decides these alone.
      fc.string({ unit: fc.constantFrom(..."0123456789."), maxLength: 17 }),
      fc
        .tuple(
          fc.tuple(octet, octet, octet, octet),
          fc.nat(3),
          fc.constantFrom("0", "00", "256", "999", "1000", "", "1.", "-1", " 1"),
        )
        .map(([p, k, bad]) => {
          const parts = p.map(String);
          parts[k] = bad === "0" ? `0${parts[k] ?? ""}` : bad;
          return parts.join(".");
        }),
    );
    fc.assert(
      fc.property(nearValid, (s) => {
        assert.equal(parseIp(s) !== undefined, reference(s), `disagreement on ${JSON.stringify(s)}`);
      }),
      { numRuns: 20000 },
    );
  });
});

describe("limitKey: what per-address limits count", () => {
  test("table: IPv4 and mapped addresses as themselves, IPv6 by /64, anything else as its text", () => {
    const table: Array<[string, string]> = [
      ["192.0.2.7", "192.0.2.7"],
      ["::ffff:192.0.2.7", "::ffff:192.0.2.7"],
      ["2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"],
      ["2001:db8:1:2::", "2001:db8:1:2::/64"],
      ["::1", "::/64"],
      ["fe80::1", "fe80::/64"],
      ["not an address", "not an address"],
      ["", ""],
    ];
    for (const [text, key] of table) assert.equal(limitKey(text), key, text);
  });

  test("property: two IPv6 addresses share a key exactly when their first 64 bits agree", () => {
    const groups = fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 8, maxLength: 8 });
    // Mapped addresses (::ffff:0:0/96) are IPv4 to every limit.
    const mapped = (g: number[]): boolean => g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff;
    const text = (g: number[]): string => g.map((x) => x.toString(16)).join(":");
    fc.assert(
      fc.property(groups, groups, fc.boolean(), (ga, gb, share) => {
        const b = share ? [...ga.slice(0, 4), ...gb.slice(4)] : gb;
        fc.pre(!mapped(ga) && !mapped(b));
        const same = ga.slice(0, 4).every((x, i) => x === b[i]);
        assert.equal(limitKey(text(ga)) === limitKey(text(b)), same, `${text(ga)} ${text(b)}`);
      }),
    );
  });
});
