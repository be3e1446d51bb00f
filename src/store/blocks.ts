/**
 * The keys file's bytes held as a head, blocks of consecutive entries and a
 * tail, for the file store's writes. A change splices one block (at most a
 * few hundred entries, {@link spliceChange} on that block alone) and the new
 * file is the old blocks around it, written out as parts: no write copies
 * the file, shifts an index of every entry or compares every id (a key is
 * found by one set probe per block). Blocks are immutable; a change makes a
 * new {@link EntryBlocks} sharing every block it did not touch, so a change
 * whose write fails leaves the old one as it was.
 */
import { setImmediate as yieldTurn } from "node:timers/promises";
import { changedId, type KeyChange } from "./change.js";
import { spliceChange, type EntryIndex } from "./splice.js";

/** Entries per block when a file is first split, and most entries a create appends to the last block. */
export const BLOCK_ENTRIES = 256;

/** Entries indexed per turn of the event loop while the blocks of a large file are built. */
const BUILD_SLICE = 1024;

/** Consecutive entries: their bytes, their index relative to those bytes, and their ids in order and as a set. */
interface Block {
  readonly bytes: Buffer;
  readonly index: EntryIndex;
  readonly ids: readonly string[];
  readonly has: ReadonlySet<string>;
}

function block(bytes: Buffer, index: EntryIndex, ids: readonly string[]): Block {
  return { bytes, index, ids, has: new Set(ids) };
}

/** `xs[from, to)` less `base`. */
function relative(xs: Float64Array, from: number, to: number, base: number): Float64Array<ArrayBuffer> {
  const out = new Float64Array(to - from);
  for (let i = from; i < to; i++) out[i - from] = (xs[i] ?? 0) - base;
  return out;
}

/** The bytes of a file split into blocks of entries (see the module comment). */
export class EntryBlocks {
  private constructor(
    private readonly head: Buffer,
    private readonly blocks: readonly Block[],
    private readonly tail: Buffer,
    /** Entries per block (see {@link BLOCK_ENTRIES}). */
    private readonly size: number,
  ) {}

  /**
   * The blocks of the whole file `bytes`, indexed by `index` (whose entries
   * are `ids`, in order), built a slice of entries at a time between turns
   * of the event loop. The blocks are views of `bytes`: nothing is copied.
   * `size` is the entries per block (tests make it small).
   */
  static async build(
    bytes: Buffer,
    index: EntryIndex,
    ids: readonly string[],
    size = BLOCK_ENTRIES,
  ): Promise<EntryBlocks> {
    const { indent, starts, bodies, end } = index;
    const blocks: Block[] = [];
    let sinceYield = 0;
    for (let from = 0; from < ids.length; from += size) {
      const to = Math.min(from + size, ids.length);
      const base = starts[from] ?? 0;
      const stop = to < ids.length ? (starts[to] ?? end) : end;
      const at = {
        indent,
        starts: relative(starts, from, to, base),
        bodies: relative(bodies, from, to, base),
        end: stop - base,
      };
      blocks.push(block(bytes.subarray(base, stop), at, ids.slice(from, to)));
      sinceYield += to - from;
      if (sinceYield >= BUILD_SLICE) {
        sinceYield = 0;
        await yieldTurn();
      }
    }
    const first = ids.length > 0 ? (starts[0] ?? 0) : end;
    return new EntryBlocks(bytes.subarray(0, first), blocks, bytes.subarray(end), size);
  }

  /** The file's bytes, in order, as parts (views shared with this object: not to be modified). */
  parts(): Buffer[] {
    return [this.head, ...this.blocks.map((b) => b.bytes), this.tail];
  }

  /** The file's bytes in one buffer (a copy of the whole file: for the rare whole-document edit). */
  joined(): Buffer {
    return Buffer.concat(this.parts());
  }

  /** Number of blocks (for tests). */
  get blockCount(): number {
    return this.blocks.length;
  }

  /**
   * The file after `change`, splicing only the block that holds the key (a
   * create: the last block, or a new one once the last holds `size`
   * entries); undefined when the key is in no block or not where its block
   * says, so the caller falls back to the whole-document edit.
   */
  apply(change: KeyChange): { parts: Buffer[]; next: EntryBlocks } | undefined {
    const id = changedId(change);
    let b = this.blocks.length - 1;
    let position = -1;
    if (change.kind === "create") {
      const last = this.blocks[b];
      if (last === undefined) return undefined;
      // A new block starts after a full one that ends a line (a file without a final newline grows its last block).
      if (last.ids.length >= this.size && last.bytes[last.bytes.length - 1] === 10) b++;
    } else {
      // One set probe per block: a few hundred at 100,000 keys.
      b = this.blocks.findIndex((x) => x.has.has(id));
      if (b < 0) return undefined;
      position = (this.blocks[b] as Block).ids.indexOf(id);
    }
    const old = this.blocks[b] ?? block(Buffer.alloc(0), emptyIndex(this.blocks[0]?.index.indent ?? 2), []);
    const spliced = spliceChange(old.bytes, old.index, position, change);
    if (spliced === undefined) return undefined;
    const ids =
      change.kind === "create"
        ? [...old.ids, id]
        : change.kind === "delete"
          ? old.ids.filter((x) => x !== id)
          : old.ids;
    const blocks = this.blocks.slice();
    blocks[b] = block(Buffer.concat(spliced.parts), spliced.index, ids);
    const next = new EntryBlocks(this.head, blocks, this.tail, this.size);
    return { parts: next.parts(), next };
  }
}

/** The index of a block without entries. */
function emptyIndex(indent: number): EntryIndex {
  return { indent, starts: new Float64Array(0), bodies: new Float64Array(0), end: 0 };
}
