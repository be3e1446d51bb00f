/**
 * A binary prefix trie over address bits, the textbook structure for CIDR
 * matching; kept here as a contender so the benchmark can show what the
 * merged-range matcher in src/ip/matcher.ts is measured against.
 */
import type { Cidr, Ip } from "../src/ip/address.js";

/** Binary trie: node i has children at 2i/2i+1 slots of `next`; `terminal` marks a stored prefix. */
export class PrefixTrie {
  private next: Int32Array = new Int32Array(2 * 1024).fill(-1);
  private terminal: Uint8Array = new Uint8Array(1024);
  private nodes = 1;

  constructor(
    cidrs: readonly Cidr[],
    readonly family: 4 | 6,
  ) {
    for (const c of cidrs) if (c.ip.family === family) this.insert(c.ip, c.prefix);
  }

  private bit(ip: Ip, k: number): number {
    if (this.family === 4) return (ip.w3 >>> (31 - k)) & 1;
    const w = k < 32 ? ip.w0 : k < 64 ? ip.w1 : k < 96 ? ip.w2 : ip.w3;
    return (w >>> (31 - (k & 31))) & 1;
  }

  private grow(): void {
    const next = new Int32Array(this.next.length * 2).fill(-1);
    next.set(this.next);
    this.next = next;
    const terminal = new Uint8Array(this.terminal.length * 2);
    terminal.set(this.terminal);
    this.terminal = terminal;
  }

  private insert(ip: Ip, prefix: number): void {
    let node = 0;
    for (let k = 0; k < prefix; k++) {
      if (this.terminal[node]) return; // a shorter prefix already covers it
      const slot = 2 * node + this.bit(ip, k);
      let child = this.next[slot] as number;
      if (child < 0) {
        if (this.nodes >= this.terminal.length) this.grow();
        child = this.nodes++;
        this.next[slot] = child;
      }
      node = child;
    }
    this.terminal[node] = 1;
  }

  /** Whether any stored prefix covers `ip`. */
  contains(ip: Ip): boolean {
    if (ip.family !== this.family) return false;
    const bits = this.family === 4 ? 32 : 128;
    let node = 0;
    for (let k = 0; k < bits; k++) {
      if (this.terminal[node]) return true;
      node = this.next[2 * node + this.bit(ip, k)] as number;
      if (node < 0) return false;
    }
    return this.terminal[node] === 1;
  }
}
