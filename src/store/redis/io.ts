/**
 * Bulk copies between key records and a Redis store (`keyfence keys import`
 * and `export`, SPEC §6). An import is idempotent by id: a record already
 * stored as given is left alone. Into a store without its generation marker
 * (new, or whose data vanished) the import first clears what is left under
 * the prefix and sets the marker last, so replicas see the whole import at
 * once; into a live store each batch is one atomic script that bumps the
 * version, logs the changed ids and tells the replicas.
 */
import { randomBytes } from "node:crypto";
import { createClient } from "redis";
import { hexOfDigest } from "../digest.js";
import type { KeyRecord } from "../keysfile.js";
import { encodeRecord, readable } from "./record.js";
import { journalAppendLua, LOG_MAX, newStamp, redisKeys, scanPage } from "./store.js";

/** Records per import script call. */
const IMPORT_BATCH = 1_000;

/**
 * KEYS: keys, hashes, version, generation, log, audit. ARGV: channel, log
 * length, fresh ("1"/"0"), journal entry head and tail ("" for none; the
 * entry is head, the JSON array of the ids written, tail), journal length,
 * the batch's stamp (see COMMIT in store.ts), then id, record, secret hash
 * triples. Finds what changed, writes the batch's journal entry, then the
 * changes. Returns the number written, or {'journal', error}.
 */
const IMPORT = `
local changed, prev = {}, {}
for i = 8, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur ~= ARGV[i + 1] then
    table.insert(changed, i)
    prev[i] = cur
  end
end
if #changed == 0 then return 0 end
local entry = ''
if ARGV[4] ~= '' then
  local ids = {}
  for _, i in ipairs(changed) do table.insert(ids, ARGV[i]) end
  entry = ARGV[4] .. cjson.encode(ids) .. ARGV[5]
end
${journalAppendLua(6, "entry", "ARGV[6]")}
for _, i in ipairs(changed) do
  local id, rec, sha, cur = ARGV[i], ARGV[i + 1], ARGV[i + 2], prev[i]
  if cur then
    local old = cjson.decode(cur)[2]
    if old ~= sha then redis.call('HDEL', KEYS[2], old) end
  end
  redis.call('HSET', KEYS[1], id, rec)
  redis.call('HSET', KEYS[2], sha, id)
end
if ARGV[3] == '1' then return #changed end
local v = redis.call('INCR', KEYS[3])
for j, i in ipairs(changed) do
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], v .. '-' .. j, 'id', ARGV[i], 'n', ARGV[7])
end
local gen = redis.call('GET', KEYS[4])
if gen then redis.call('PUBLISH', ARGV[1], gen .. ' ' .. v) end
return #changed
`;

/** Stands for the ids an import batch wrote, in the journal entry template of {@link ImportOptions.journal}. */
export const IMPORTED_IDS = "\u0000ids written by this batch\u0000";

/** How an import records itself. */
export interface ImportOptions {
  /** Called after each batch. */
  readonly progress?: (done: number, total: number) => void;
  /**
   * The journal (audit) entry each batch that writes anything commits with
   * its writes: JSON text in which the string array `[IMPORTED_IDS]` stands
   * for the ids the batch wrote; and about how many entries the journal keeps.
   */
  readonly journal?: { readonly template: string; readonly maxLen: number };
}

/** What an import did. */
export interface ImportResult {
  /** Records written (new or different). */
  readonly changed: number;
  /** Records already stored as given. */
  readonly unchanged: number;
  /** True when the store had no generation marker and was initialized by this import. */
  readonly initialized: boolean;
}

/** A failure of an import, with what to fix; `imported` records were written before it (0: nothing changed). */
export class ImportRefused extends Error {
  constructor(
    message: string,
    readonly imported = 0,
  ) {
    super(message);
    this.name = "ImportRefused";
  }
}

type Client = ReturnType<typeof createClient>;

/** Connects to `url` for a one-off job (no reconnects: a failure is reported). */
export async function connectOnce(url: string): Promise<Client> {
  const client = createClient({ url, socket: { connectTimeout: 5_000, reconnectStrategy: false } });
  client.on("error", () => {
    // Reported by the command that fails.
  });
  await client.connect();
  return client;
}

/**
 * Copies `records` into the store under `prefix`, in batches, each with its
 * journal entry when `options.journal` is given. Refuses (changing nothing)
 * when a secret of `records` belongs to another key in the store, and stops
 * at the first batch whose journal entry cannot be written (that batch
 * changes nothing; earlier ones stay imported).
 */
export async function importRecords(
  client: Client,
  prefix: string,
  records: readonly KeyRecord[],
  options: ImportOptions = {},
): Promise<ImportResult> {
  const { progress, journal } = options;
  let head = "";
  let tail = "";
  if (journal !== undefined) {
    const at = journal.template.indexOf(JSON.stringify([IMPORTED_IDS]));
    if (at < 0) throw new Error("internal: an import journal template without [IMPORTED_IDS]");
    head = journal.template.slice(0, at);
    tail = journal.template.slice(at + JSON.stringify([IMPORTED_IDS]).length);
  }
  const names = redisKeys(prefix);
  const fresh = (await client.get(names.generation)) === null;
  if (fresh) await client.del([names.keys, names.hashes, names.log, names.version]);
  else {
    // A secret held by another id in the store would leave two keys with one secret.
    for (let i = 0; i < records.length; i += IMPORT_BATCH) {
      const batch = records.slice(i, i + IMPORT_BATCH);
      const owners = await client.hmGet(
        names.hashes,
        batch.map((r) => hexOfDigest(r.secretDigest)),
      );
      owners.forEach((owner, k) => {
        const r = batch[k];
        if (owner !== null && r !== undefined && owner !== r.id) {
          throw new ImportRefused(`key ${r.id}: its secret_sha256 belongs to key ${owner} in the store`);
        }
      });
    }
  }
  let changed = 0;
  for (let i = 0; i < records.length; i += IMPORT_BATCH) {
    const batch = records.slice(i, i + IMPORT_BATCH);
    const args = [
      names.channel,
      String(LOG_MAX),
      fresh ? "1" : "0",
      head,
      tail,
      String(journal?.maxLen ?? 0),
      newStamp(),
    ];
    for (const r of batch) args.push(r.id, encodeRecord(r), hexOfDigest(r.secretDigest));
    const n = await client.eval(IMPORT, {
      keys: [names.keys, names.hashes, names.version, names.generation, names.log, names.audit],
      arguments: args,
    });
    if (Array.isArray(n)) {
      const why: unknown = n[1];
      throw new ImportRefused(
        `cannot write the audit stream ${names.audit} (${typeof why === "string" ? why : "unknown error"}): the import stopped after ${i} of ${records.length} records`,
        i,
      );
    }
    changed += Number(n);
    progress?.(Math.min(i + IMPORT_BATCH, records.length), records.length);
  }
  if (records.length === 0) progress?.(0, 0);
  if (fresh) {
    const gen = randomBytes(8).toString("hex");
    await client.multi().set(names.version, "1").set(names.generation, gen).publish(names.channel, `${gen} 1`).exec();
  }
  return { changed, unchanged: records.length - changed, initialized: fresh };
}

/**
 * Every record of the store under `prefix`, by id; `progress(done, total)`
 * after each batch. Rejects when the store holds no keyfence data.
 */
export async function exportRecords(
  client: Client,
  prefix: string,
  progress?: (done: number, total: number) => void,
): Promise<KeyRecord[]> {
  const names = redisKeys(prefix);
  if ((await client.get(names.generation)) === null) {
    throw new ImportRefused(`the store holds no keyfence data under the prefix ${JSON.stringify(prefix)}`);
  }
  const total = await client.hLen(names.keys);
  const out: KeyRecord[] = [];
  let cursor = "0";
  do {
    const page = await scanPage(client, names.keys, cursor, IMPORT_BATCH);
    cursor = page.cursor;
    for (let i = 0; i < page.items.length; i += 2)
      out.push(readable(page.items[i] as string, page.items[i + 1] as string));
    progress?.(out.length, total);
  } while (cursor !== "0");
  out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return out;
}
