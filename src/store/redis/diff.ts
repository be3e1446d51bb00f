/**
 * What a full read of the Redis store changes in the snapshot a replica
 * already holds. A resync after a reconnect or a re-import usually finds
 * few differences among a million keys: applied as changes over the
 * snapshot (its overlay), they leave its maps of every key in place, where
 * building new ones would cost seconds of CPU and leave the old ones, tens
 * of megabytes, to a major collection that stalls the proxy. Which of the
 * held keys were read is marked in a byte array by their place in the
 * snapshot's sorted ids, so the diff itself adds no object per key either.
 */
import { setImmediate as yieldTurn } from "node:timers/promises";
import type { KeyChange } from "../change.js";
import type { Snapshot } from "../snapshot.js";
import type { SortedIds } from "../sorted.js";
import { encodeRecord, readable } from "./record.js";

/** Held ids looked at per turn of the event loop while those not read are sought. */
const SEEK_SLICE = 50_000;

/** The differences between a snapshot and the records of one full read, collected record by record. */
export class ResyncDiff {
  /** 1 where the held id at that place in {@link ids} was read. */
  private readonly read: Uint8Array;
  /** Held ids read (each counted once). */
  private found = 0;
  private readonly changes: KeyChange[] = [];

  private constructor(
    private readonly previous: Snapshot,
    private readonly ids: SortedIds,
    private readonly limit: number,
  ) {
    this.read = new Uint8Array(ids.length);
  }

  /**
   * A diff against `previous` (whose sorted ids it builds, a slice at a
   * time, when the snapshot has none yet); `limit`: most differences worth
   * applying as changes (more: build the snapshot afresh).
   */
  static async over(previous: Snapshot, limit: number): Promise<ResyncDiff> {
    return new ResyncDiff(previous, await previous.sortedIds(), limit);
  }

  /**
   * Notes the record of `id` read as `text` (a repeated id, as a scan may
   * return, counts once; its later text wins); false once more than `limit`
   * records differ. Throws UnreadableRecordError like {@link readable}.
   */
  see(id: string, text: string): boolean {
    const old = this.previous.record(id);
    if (old !== undefined) {
      const at = this.ids.indexOf(id);
      if (at >= 0 && this.read[at] === 0) {
        this.read[at] = 1;
        this.found++;
      }
    }
    if (old === undefined || encodeRecord(old) !== text)
      this.changes.push({ kind: "update", record: readable(id, text) });
    return this.changes.length <= this.limit;
  }

  /**
   * The changes that turn the snapshot into what was read: every record that
   * differs, then a delete for each held id not read (sought a slice at a
   * time, and only when some are missing); undefined when they number more
   * than `limit`.
   */
  async finish(): Promise<KeyChange[] | undefined> {
    if (this.found < this.ids.length) {
      let i = 0;
      for (const id of this.ids) {
        if (this.read[i] === 0) this.changes.push({ kind: "delete", id });
        if (++i % SEEK_SLICE === 0) await yieldTurn();
      }
    }
    return this.changes.length <= this.limit ? this.changes : undefined;
  }
}
