import assert from "node:assert/strict";
import type { IncomingMessage } from "node:http";
import { describe, test } from "node:test";
import fc from "fast-check";
import proxyaddr from "proxy-addr";
import {
  compileTrust,
  forwardedEntries,
  peerOf,
  resolveClientIp,
  resolveFromPeer,
  type CompiledTrust,
} from "../../src/clientip/resolve.js";
import { formatIp, parseIp } from "../../src/ip/address.js";

function trust(setting: unknown[] | number): CompiledTrust {
  const t = compileTrust(setting);
  if (Array.isArray(t)) throw new Error(JSON.stringify(t));
  return t;
}

describe("forwardedEntries", () => {
  const cases: Array<[string, string[]]> = [
    ["", []],
    ["1.2.3.4", ["1.2.3.4"]],
    ["1.2.3.4, 5.6.7.8", ["5.6.7.8", "1.2.3.4"]],
    ["1.2.3.4,5.6.7.8 ,  9.9.9.9", ["9.9.9.9", "5.6.7.8", "1.2.3.4"]],
    [" , ,1.2.3.4,, ", ["1.2.3.4"]],
    ["\t1.2.3.4\t", ["1.2.3.4"]],
    ["garbage, 1.2.3.4", ["1.2.3.4", "garbage"]],
  ];
  for (const [header, expected] of cases) {
    test(JSON.stringify(header), () => assert.deepEqual(forwardedEntries(header), expected));
  }
});

describe("resolveClientIp: tables", () => {
  const cases: Array<{
    desc: string;
    trust: unknown[] | number;
    peer: string;
    xff?: string;
    client: string;
    valid?: boolean;
    peerTrusted?: boolean;
  }> = [
    {
      desc: "no trust: the peer, whatever XFF says",
      trust: [],
      peer: "203.0.113.9",
      xff: "1.1.1.1",
      client: "203.0.113.9",
    },
    { desc: "no trust, mapped peer canonicalized", trust: [], peer: "::ffff:127.0.0.1", client: "127.0.0.1" },
    {
      desc: "untrusted peer: spoofed XFF ignored",
      trust: ["10.0.0.0/8"],
      peer: "203.0.113.9",
      xff: "1.1.1.1",
      client: "203.0.113.9",
    },
    {
      desc: "trusted peer: rightmost XFF entry",
      trust: ["10.0.0.0/8"],
      peer: "10.0.0.1",
      xff: "1.1.1.1, 198.51.100.2",
      client: "198.51.100.2",
      peerTrusted: true,
    },
    {
      desc: "spoofed left-most entries never count",
      trust: ["10.0.0.0/8"],
      peer: "10.0.0.1",
      xff: "6.6.6.6, 10.0.0.5, 198.51.100.2",
      client: "198.51.100.2",
    },
    {
      desc: "chain of trusted proxies walked to the first untrusted",
      trust: ["10.0.0.0/8"],
      peer: "10.0.0.1",
      xff: "6.6.6.6, 198.51.100.2, 10.0.0.9, 10.0.0.5",
      client: "198.51.100.2",
    },
    {
      desc: "all trusted: the left-most",
      trust: ["10.0.0.0/8"],
      peer: "10.0.0.1",
      xff: "10.1.1.1, 10.0.0.2",
      client: "10.1.1.1",
    },
    {
      desc: "trusted peer without XFF: the peer",
      trust: ["loopback"],
      peer: "127.0.0.1",
      client: "127.0.0.1",
      peerTrusted: true,
    },
    { desc: "names: loopback covers ::1", trust: ["loopback"], peer: "::1", xff: "2001:db8::7", client: "2001:db8::7" },
    {
      desc: "names: uniquelocal",
      trust: ["uniquelocal"],
      peer: "192.168.1.1",
      xff: "203.0.113.1",
      client: "203.0.113.1",
    },
    { desc: "names: linklocal", trust: ["linklocal"], peer: "fe80::1", xff: "203.0.113.1", client: "203.0.113.1" },
    {
      desc: "hop count 1: the rightmost entry",
      trust: 1,
      peer: "203.0.113.9",
      xff: "6.6.6.6, 198.51.100.2",
      client: "198.51.100.2",
    },
    {
      desc: "hop count 2",
      trust: 2,
      peer: "203.0.113.9",
      xff: "6.6.6.6, 198.51.100.2, 10.9.9.9",
      client: "198.51.100.2",
    },
    {
      desc: "hop count beyond the list: the left-most",
      trust: 5,
      peer: "203.0.113.9",
      xff: "198.51.100.2",
      client: "198.51.100.2",
    },
    { desc: "hop count 0 trusts nobody", trust: 0, peer: "203.0.113.9", xff: "198.51.100.2", client: "203.0.113.9" },
    {
      desc: "garbage entry is an untrusted hop of unknown address",
      trust: ["10.0.0.0/8"],
      peer: "10.0.0.1",
      xff: "198.51.100.2, not-an-ip",
      client: "not-an-ip",
      valid: false,
    },
    {
      desc: "octal entry is never read as 127.0.0.1 (nor trusted)",
      trust: ["loopback"],
      peer: "127.0.0.1",
      xff: "1.2.3.4, 0177.0.0.1",
      client: "0177.0.0.1",
      valid: false,
    },
    {
      desc: "short form 127.1 is garbage",
      trust: ["loopback"],
      peer: "127.0.0.1",
      xff: "127.1",
      client: "127.1",
      valid: false,
    },
    {
      desc: "address with port is garbage",
      trust: ["loopback"],
      peer: "127.0.0.1",
      xff: "1.2.3.4:80",
      client: "1.2.3.4:80",
      valid: false,
    },
    {
      desc: "mapped XFF entry canonicalized and trusted as IPv4",
      trust: ["10.0.0.0/8"],
      peer: "10.0.0.1",
      xff: "198.51.100.2, ::ffff:10.0.0.3",
      client: "198.51.100.2",
    },
    {
      desc: "IPv6 client canonicalized",
      trust: ["loopback"],
      peer: "127.0.0.1",
      xff: "2001:DB8:0::1",
      client: "2001:db8::1",
    },
    {
      desc: "catch-all trust: the left-most",
      trust: ["0.0.0.0/0"],
      peer: "203.0.113.9",
      xff: "6.6.6.6, 7.7.7.7",
      client: "6.6.6.6",
    },
  ];
  for (const c of cases) {
    test(c.desc, () => {
      const r = resolveClientIp(c.peer, c.xff, trust(c.trust));
      assert.equal(r.text, c.client);
      assert.equal(r.ip !== undefined, c.valid ?? true);
      if (c.peerTrusted !== undefined) assert.equal(r.peerTrusted, c.peerTrusted);
    });
  }
});

describe("compileTrust", () => {
  test("rejects loose or invalid entries, each with its index", () => {
    const r = compileTrust(["10.0.0.0/8", "0177.0.0.1", "10.0.0.1/8", "lan", 5]);
    assert.ok(Array.isArray(r));
    assert.deepEqual(
      r.map((p) => p.index),
      [1, 2, 3, 4],
    );
  });
  test("reports catch-all entries for a warning", () => {
    const t = trust(["::/0", "10.0.0.0/8"]);
    assert.deepEqual(t.catchAll, ["::/0"]);
  });
});

describe("resolveClientIp: property against proxy-addr on well-formed input", () => {
  const v4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((p) => p.join("."));
  // A small universe so that trusted and untrusted addresses both occur often.
  const addr = fc.oneof(
    v4,
    fc.constantFrom(
      "10.0.0.1",
      "10.0.0.2",
      "127.0.0.1",
      "192.168.0.9",
      "::1",
      "fe80::1",
      "2001:db8::5",
      "::ffff:10.0.0.7",
      "fd00::3",
    ),
  );
  const trustSetting = fc.oneof(
    fc.nat(4),
    fc.subarray(["loopback", "linklocal", "uniquelocal", "10.0.0.0/8", "2001:db8::/32", "198.51.100.0/24", "::1"]),
  );
  /** proxy-addr's client for `peer` and `xff`, trusting the first `setting` hops or the listed ranges (the reference). */
  const proxyAddrClient = (peer: string, xff: string | undefined, setting: number | readonly string[]): string => {
    const req = {
      socket: { remoteAddress: peer },
      connection: { remoteAddress: peer },
      headers: xff === undefined ? {} : { "x-forwarded-for": xff },
    } as unknown as IncomingMessage;
    return proxyaddr(req, typeof setting === "number" ? (_a: string, i: number) => i < setting : [...setting]);
  };
  test("same client as proxy-addr (canonicalized)", () => {
    fc.assert(
      fc.property(addr, fc.array(addr, { maxLength: 6 }), trustSetting, (peer, chain, setting) => {
        const xff = chain.length > 0 ? chain.join(", ") : undefined;
        const expected = proxyAddrClient(peer, xff, setting);
        const ours = resolveClientIp(peer, xff, trust(typeof setting === "number" ? setting : [...setting]));
        const canonical = formatIp(
          parseIp(expected) ??
            (() => {
              throw new Error(`reference gave ${expected}`);
            })(),
        );
        assert.equal(ours.text, canonical);
      }),
      { numRuns: 3000 },
    );
  });
  test("a peer read once per connection (peerOf) resolves each of its requests as proxy-addr does", () => {
    fc.assert(
      fc.property(
        addr,
        fc.array(fc.array(addr, { maxLength: 4 }), { maxLength: 5 }),
        trustSetting,
        (peer, chains, setting) => {
          const ourTrust = trust(typeof setting === "number" ? setting : [...setting]);
          const connection = peerOf(peer, ourTrust);
          for (const chain of chains) {
            const xff = chain.length > 0 ? chain.join(", ") : undefined;
            const expected = parseIp(proxyAddrClient(peer, xff, setting));
            assert.ok(expected !== undefined);
            const ours = resolveFromPeer(connection, xff, ourTrust);
            assert.equal(ours.text, formatIp(expected));
            assert.deepEqual(ours, resolveClientIp(peer, xff, ourTrust));
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});

describe("resolveClientIp: the client's text is formatIp's canonical text (differential)", () => {
  // hop() keeps a dotted quad's own text instead of formatting it again: it must be exactly what formatIp writes.
  const reference = (raw: string): string => {
    const ip = parseIp(raw);
    return ip === undefined ? raw : formatIp(ip);
  };
  const octet = fc.oneof(fc.nat(255).map(String), fc.constantFrom("0", "00", "01", "256", "1e1", " 1", "+1", "0x1"));
  const text = fc.oneof(
    fc.tuple(octet, octet, octet, octet).map((p) => p.join(".")),
    fc
      .tuple(fc.constantFrom("::ffff:", "::FFFF:", "::", "0:0:0:0:0:ffff:", ""), octet, octet, octet, octet)
      .map(([pre, ...p]) => `${pre}${p.join(".")}`),
    fc.string({ maxLength: 20 }),
  );
  const none = trust([]);
  const all = trust(["0.0.0.0/0", "::/0"]);
  test("peer and X-Forwarded-For entries, any text", () => {
    fc.assert(
      fc.property(text, text, (peer, xff) => {
        assert.equal(resolveClientIp(peer, undefined, none).text, reference(peer));
        const c = resolveClientIp(peer, xff, all);
        assert.equal(c.peer, reference(peer));
        if (c.peerTrusted && forwardedEntries(xff).length === 1)
          assert.equal(c.text, reference(forwardedEntries(xff)[0] ?? ""));
      }),
      { numRuns: 5000 },
    );
  });
});
