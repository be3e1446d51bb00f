/**
 * What a full read of the Redis store changes in the snapshot a replica
 * already holds. A resync after a reconnect or a re-import usually finds
 * few differences among a million keys: applied as changes over the
 * snapshot (its overlay), they leave its maps of every key in place, where
 * building new ones would cost seconds of CPU and leave the old ones, tens
 * of megabytes, to a major collection that stalls the proxy.
 */
import type { KeyChange } from "../change.js";
import { ShardedMap } from "../shards.js";
import type { Snapshot } from "../snapshot.js";
import { encodeRecord, readable } from "./record.js";

/** Records looked at per turn of the event loop while the ids no longer stored are sought. */
const SEEK_SLICE = 5_000;

/** The differences between `previous` and the records of one full read, collected record by record. */
export class ResyncDiff {
  private readonly seen = new ShardedMap<true>();
  /** Ids read that `previous` holds (each counted once). */
  private found = 0;
  private readonly changes: KeyChange[] = [];

  /** `limit`: most differences worth applying as changes (more: build the snapshot afresh). */
  constructor(
    private readonly previous: Snapshot,
    private readonly limit: number,
  ) {}

  /**
   * Notes the record of `id` read as `text` (a repeated id, as a scan may
   * return, counts once; its later text wins); false once more than `limit`
   * records differ. Throws UnreadableRecordError like {@link readable}.
   */
  see(id: string, text: string): boolean {
    const old = this.previous.record(id);
    if (!this.seen.has(id)) {
      this.seen.set(id, true);
      if (old !== undefined) this.found++;
    }
    if (old === undefined || encodeRecord(old) !== text)
      this.changes.push({ kind: "update", record: readable(id, text) });
    return this.changes.length <= this.limit;
  }

  /**
   * The changes that turn `previous` into what was read: every record that
   * differs, then a delete for each id of `previous` not read (sought a
   * slice at a time, and only when some are missing); undefined when they
   * number more than `limit`.
   */
  async finish(): Promise<KeyChange[] | undefined> {
    if (this.found < this.previous.size) {
      let n = 0;
      for (const rec of this.previous.iterate()) {
        if (!this.seen.has(rec.id)) this.changes.push({ kind: "delete", id: rec.id });
        if (++n % SEEK_SLICE === 0) await new Promise((r) => setImmediate(r));
      }
    }
    return this.changes.length <= this.limit ? this.changes : undefined;
  }
}
