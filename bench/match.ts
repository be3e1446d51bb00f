/**
 * `npm run bench:match`: lookups per second of the compiled matcher against a
 * binary prefix trie, `net.BlockList` and a linear ipaddr.js scan, for lists
 * of 10, 1,000 and 100,000 CIDRs, IPv4 and IPv6, hits and misses; plus strict
 * address parsing against ipaddr.js. Writes bench/results/match.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { BlockList } from "node:net";
import ipaddr from "ipaddr.js";
import { formatIp, IpError, parseCidr, parseIp, type Cidr, type Ip } from "../src/ip/address.js";
import { compileMatcher } from "../src/ip/matcher.js";
import { machine, opsPerSecond, prng, rate, table } from "./lib.js";
import { PrefixTrie } from "./trie.js";

const quick = process.argv.includes("--quick");
const SIZES = quick ? [10, 1000] : [10, 1000, 100_000];
const MS = quick ? 150 : 400;
const rand = prng(42);
const u32 = (): number => Math.floor(rand() * 2 ** 32) >>> 0;

function randomCidr(family: 4 | 6): Cidr {
  for (;;) {
    const text =
      family === 4
        ? `${formatIp({ family: 4, w0: 0, w1: 0, w2: 0, w3: u32() })}/${16 + Math.floor(rand() * 17)}`
        : `${formatIp({ family: 6, w0: (0x20010000 | (u32() & 0xffff)) >>> 0, w1: u32(), w2: u32(), w3: u32() })}/${32 + Math.floor(rand() * 97)}`;
    const [addr, prefix] = text.split("/") as [string, string];
    const ip = parseIp(addr) as Ip;
    // Clear host bits by formatting the network.
    const c = parseCidr(`${formatIp(ip)}/${prefix}`);
    if (c instanceof IpError) {
      const fixed = parseCidr(c.suggestion ?? "");
      if (!(fixed instanceof IpError)) return fixed;
      continue;
    }
    return c;
  }
}

/** An address inside `c` (hit) chosen at random. */
function inside(c: Cidr): Ip {
  const ip = c.ip;
  if (ip.family === 4) {
    const host = c.prefix === 32 ? 0 : u32() & ((1 << (32 - c.prefix)) - 1 || 0xffffffff);
    return { family: 4, w0: 0, w1: 0, w2: 0, w3: (ip.w3 | (c.prefix === 0 ? u32() : host)) >>> 0 };
  }
  return ip; // network address itself: always inside
}

interface Row {
  family: 4 | 6;
  entries: number;
  probe: "hit" | "miss";
  results: Record<string, number>;
}

const rows: Row[] = [];
for (const family of [4, 6] as const) {
  for (const n of SIZES) {
    const cidrs = Array.from({ length: n }, () => randomCidr(family));
    const texts = cidrs.map((c) => `${formatIp(c.ip)}/${c.prefix}`);
    const matcher = compileMatcher(cidrs);
    const trie = new PrefixTrie(cidrs, family);
    const block = new BlockList();
    for (const c of cidrs) block.addSubnet(formatIp(c.ip), c.prefix, family === 4 ? "ipv4" : "ipv6");
    const parsedRanges = texts.map((t) => ipaddr.parseCIDR(t));
    const probes: Record<"hit" | "miss", Ip[]> = {
      hit: Array.from({ length: 1024 }, () => inside(cidrs[Math.floor(rand() * n)] as Cidr)),
      miss: [],
    };
    while (probes.miss.length < 1024) {
      const ip: Ip =
        family === 4
          ? { family: 4, w0: 0, w1: 0, w2: 0, w3: u32() }
          : { family: 6, w0: 0x3fff0000 + (u32() & 0xffff), w1: u32(), w2: u32(), w3: u32() };
      if (!matcher.contains(ip)) probes.miss.push(ip);
    }
    for (const probe of ["hit", "miss"] as const) {
      const ips = probes[probe];
      const texts2 = ips.map(formatIp);
      const ipaddrs = texts2.map((t) => ipaddr.parse(t));
      const mask = ips.length - 1;
      for (const ip of ips) {
        const expected = probe === "hit";
        if (matcher.contains(ip) !== expected || trie.contains(ip) !== expected) throw new Error("contender disagrees");
      }
      const results: Record<string, number> = {
        "keyfence matcher": opsPerSecond((i) => matcher.contains(ips[i & mask] as Ip), MS),
        "binary trie": opsPerSecond((i) => trie.contains(ips[i & mask] as Ip), MS),
        "net.BlockList": opsPerSecond(
          (i) => block.check(texts2[i & mask] as string, family === 4 ? "ipv4" : "ipv6"),
          MS,
          100,
        ),
        "ipaddr.js linear scan": opsPerSecond(
          (i) => {
            const a = ipaddrs[i & mask] as ipaddr.IPv4 | ipaddr.IPv6;
            for (const r of parsedRanges) if (a.kind() === r[0].kind() && a.match(r)) return true;
            return false;
          },
          MS,
          n >= 100_000 ? 1 : n >= 1000 ? 10 : 1000,
        ),
      };
      rows.push({ family, entries: n, probe, results });
      process.stderr.write(`IPv${family} ${n} entries, ${probe}: ${rate(results["keyfence matcher"] ?? 0)}\n`);
    }
  }
}

// Parsing client addresses: the strict hand-written parser against ipaddr.js.
const v4Texts = Array.from({ length: 1024 }, () => formatIp({ family: 4, w0: 0, w1: 0, w2: 0, w3: u32() }));
const v6Texts = Array.from({ length: 1024 }, () =>
  formatIp({ family: 6, w0: 0x20010db8, w1: u32(), w2: u32(), w3: u32() }),
);
const parse = {
  "keyfence parseIp IPv4": opsPerSecond((i) => parseIp(v4Texts[i & 1023] as string), MS),
  "ipaddr.js parse IPv4": opsPerSecond((i) => ipaddr.parse(v4Texts[i & 1023] as string), MS),
  "keyfence parseIp IPv6": opsPerSecond((i) => parseIp(v6Texts[i & 1023] as string), MS),
  "ipaddr.js parse IPv6": opsPerSecond((i) => ipaddr.parse(v6Texts[i & 1023] as string), MS),
};

const contenders = Object.keys(rows[0]?.results ?? {});
const out = [
  `Machine: ${machine()}`,
  "",
  "Lookups per second (one core, single thread):",
  "",
  table(
    ["family", "entries", "probe", ...contenders, "matcher / BlockList"],
    rows.map((r) => [
      `IPv${r.family}`,
      r.entries.toLocaleString("en-US"),
      r.probe,
      ...contenders.map((c) => rate(r.results[c] ?? 0)),
      `${((r.results["keyfence matcher"] ?? 0) / (r.results["net.BlockList"] ?? 1)).toFixed(1)}×`,
    ]),
  ),
  "",
  "Parsing one client address:",
  "",
  table(
    ["parser", "rate"],
    Object.entries(parse).map(([k, v]) => [k, rate(v)]),
  ),
].join("\n");
console.log(out);
mkdirSync("bench/results", { recursive: true });
writeFileSync("bench/results/match.json", JSON.stringify({ machine: machine(), rows, parse }, null, 2));
