/**
 * Observed sources: for each key, the client networks (/24 for IPv4, /64 for
 * IPv6) it was recently used from, so an operator can build an allow list
 * from real traffic before enforcing it. Memory is bounded twice: at most
 * `networksPerKey` networks per key and `maxKeys` keys, each an LRU.
 */
import { LRUCache } from "lru-cache";
import { formatCidr, type Ip } from "../ip/address.js";

/** One network a key was seen from. */
export interface ObservedSource {
  /** The /24 or /64 network, canonical CIDR text. */
  readonly network: string;
  readonly requests: number;
  /** Requests from it that the key's list refused (or would have, in report mode). */
  readonly denied: number;
  readonly first_seen: string;
  readonly last_seen: string;
}

interface Entry {
  ip: Ip;
  requests: number;
  denied: number;
  first: number;
  last: number;
}

/** Bounds of the tracker. */
export interface SourcesOptions {
  readonly networksPerKey?: number;
  readonly maxKeys?: number;
  readonly now?: () => number;
}

/** Remembers recent client networks per key. */
export class SourceTracker {
  private readonly keys: LRUCache<string, LRUCache<string | number, Entry>>;
  private readonly perKey: number;
  private readonly now: () => number;

  constructor(options: SourcesOptions = {}) {
    this.perKey = options.networksPerKey ?? 64;
    this.keys = new LRUCache({ max: options.maxKeys ?? 10_000 });
    this.now = options.now ?? Date.now;
  }

  /** The entry the last record went to, and what it was for: see {@link record}. */
  private lastKey: string | undefined;
  private lastFamily = 0;
  private lastA = 0;
  private lastB = 0;
  private lastEntry: Entry | undefined;

  /** Records one request of `keyId` from `ip`, at `at` (milliseconds since the epoch; now by default). */
  record(keyId: string, ip: Ip, denied: boolean, at?: number): void {
    const t = at ?? this.now();
    // IPv4: the /24 as a number; IPv6: the /64 as its two high words.
    const a = ip.family === 4 ? (ip.w3 & 0xffffff00) >>> 0 : ip.w0;
    const b = ip.family === 4 ? 0 : ip.w1;
    // The same key and network as the last record: that entry is already the
    // most recent of both LRUs, so counting it needs neither lookup.
    let e = this.lastEntry;
    if (
      e !== undefined &&
      keyId === this.lastKey &&
      ip.family === this.lastFamily &&
      a === this.lastA &&
      b === this.lastB
    ) {
      e.requests++;
      if (denied) e.denied++;
      e.last = t;
      return;
    }
    let nets = this.keys.get(keyId);
    if (nets === undefined) {
      nets = new LRUCache({ max: this.perKey });
      this.keys.set(keyId, nets);
    }
    const id: string | number = ip.family === 4 ? a : `${a}:${b}`;
    e = nets.get(id);
    if (e === undefined) {
      const network: Ip =
        ip.family === 4 ? { family: 4, w0: 0, w1: 0, w2: 0, w3: a } : { family: 6, w0: a, w1: b, w2: 0, w3: 0 };
      e = { ip: network, requests: 1, denied: denied ? 1 : 0, first: t, last: t };
      nets.set(id, e);
    } else {
      e.requests++;
      if (denied) e.denied++;
      e.last = t;
    }
    this.lastKey = keyId;
    this.lastFamily = ip.family;
    this.lastA = a;
    this.lastB = b;
    this.lastEntry = e;
  }

  /** The networks `keyId` was seen from, most recent first. */
  sources(keyId: string): ObservedSource[] {
    const nets = this.keys.peek(keyId);
    if (nets === undefined) return [];
    const out: ObservedSource[] = [];
    for (const e of nets.values()) {
      out.push({
        network: formatCidr({ ip: e.ip, prefix: e.ip.family === 4 ? 24 : 64 }),
        requests: e.requests,
        denied: e.denied,
        first_seen: new Date(e.first).toISOString(),
        last_seen: new Date(e.last).toISOString(),
      });
    }
    return out.sort((a, b) => (a.last_seen < b.last_seen ? 1 : a.last_seen > b.last_seen ? -1 : 0));
  }

  /** Networks remembered for `keyId` (for tests of the bound). */
  size(keyId: string): number {
    return this.keys.peek(keyId)?.size ?? 0;
  }

  /** Forgets a key (deleted). */
  forget(keyId: string): void {
    this.keys.delete(keyId);
    if (keyId === this.lastKey) this.lastEntry = undefined;
  }
}
