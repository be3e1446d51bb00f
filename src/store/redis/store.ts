/**
 * The Redis key store (SPEC §6): every replica started with the same
 * `keys.redis` shares one set of keys. Redis holds, under the prefix:
 *
 * - `keys`: a hash, key id → lean record (a JSON array, {@link encodeRecord});
 * - `hashes`: a hash, secret SHA-256 → key id (secrets stay unique);
 * - `version`: the store version, incremented by every change;
 * - `generation`: a marker set when the store is initialized (`keyfence keys
 *   import`); its absence means the data vanished, which is an outage;
 * - `log`: a capped stream, one entry `<version>-0 {id}` per change, from
 *   which a replica that fell behind catches up;
 * - `audit`: the journal (the shared audit log), a stream capped at about
 *   `journalMaxLen` entries, one entry `<seq>-0 {e: text}` per change.
 *
 * A write is one Lua script: it checks the generation and that the key is
 * still what the writer's snapshot held (optimistic concurrency: on a
 * mismatch the replica catches up and plans again), appends the change's
 * journal entry first (a change whose entry cannot be written is not made),
 * applies the change, bumps the version, appends to the log and publishes `<generation>
 * <version>` on the `changes` channel. A replica applies a message whose
 * version is ahead of its own by catching up through the log (one script
 * call returning every changed record); it also catches up on connect, on
 * reconnect and every `syncIntervalMs`, so a missed message heals by itself,
 * and resyncs in full when the log no longer reaches back to its version or
 * the generation changed. The proxy reads the in-memory snapshot only: no
 * request ever waits for Redis.
 */
import { randomBytes } from "node:crypto";
import { setImmediate as yieldTurn } from "node:timers/promises";
import { readFile } from "node:fs/promises";
import { createClient, VerbatimString } from "redis";
import { writeFileAtomic } from "../../util/atomic.js";
import { changedId, type KeyChange } from "../change.js";
import { hexOfDigest } from "../digest.js";
import { entryItems } from "../entries.js";
import { parseKeysFile, type KeyRecord } from "../keysfile.js";
import { Compactor, MatcherCache, Snapshot, SnapshotBuilder } from "../snapshot.js";
import { ResyncDiff } from "./diff.js";
import { encodeRecord, readable, readableReusing, UnreadableRecordError } from "./record.js";
import {
  JournalWriteError,
  StoreConflictError,
  StoreLoadError,
  StoreUnavailableError,
  type ChangeCause,
  type Journal,
  type KeyStore,
  type Plan,
  type StoreHealth,
  type StoreListener,
} from "../store.js";

/*
 * Importing `redis` defines `class VerbatimString extends String`, which
 * leaves V8's `String.prototype` in dictionary mode: every string method
 * called in optimised code then takes a generic property load (about 10,000
 * instructions per decision, BENCHMARKS.md "Instructions per decision"). A
 * first instance of the class (its field written on a String object) puts
 * the prototype chain back in fast mode, so a Redis-store replica runs its
 * requests as a file-store one does; test/store/redis-prototype.test.ts
 * checks it on a running replica.
 */
new VerbatimString("txt", "");

/** Options of {@link RedisKeyStore}. */
export interface RedisKeyStoreOptions {
  readonly url: string;
  /** The URL without its password, for messages. */
  readonly displayUrl: string;
  readonly prefix: string;
  /** Where the last good snapshot is kept, to start while Redis is down. */
  readonly snapshotFile?: string | undefined;
  readonly maxEntries: number;
  readonly cache?: MatcherCache;
  /** How often a replica checks the store version (heals missed messages). */
  readonly syncIntervalMs?: number;
  /** How long a command may take before the store counts as unreachable. */
  readonly commandTimeoutMs?: number;
  /** How long `load` waits for a first connection. */
  readonly connectTimeoutMs?: number;
  /** About how many journal (audit) entries are kept; XADD trims with `MAXLEN ~`, so a few more may stay. */
  readonly journalMaxLen?: number;
  /** Called with lines worth logging (start from the snapshot file, resyncs). */
  readonly notice?: (event: string, message: string, fields?: Record<string, unknown>) => void;
}

/** Default of {@link RedisKeyStoreOptions.syncIntervalMs}. */
export const DEFAULT_SYNC_INTERVAL_MS = 1_000;
/** Default of {@link RedisKeyStoreOptions.journalMaxLen}. */
export const DEFAULT_JOURNAL_MAX_LEN = 100_000;
/** Entries kept in the change log; a replica further behind resyncs in full. */
export const LOG_MAX = 100_000;
/**
 * Records per HSCAN batch of a full resync: few enough that a batch's reply
 * dies young. With 5,000, replies lived long enough to be promoted, and a
 * load of 1,000,000 keys ended with about 90 MB more in the old generation
 * (RSS 714 MB against 616 MB with 2,000, in one process loading alone).
 */
const SCAN_COUNT = 2_000;
/** Records decoded and added per turn of the event loop during a full resync. */
const DECODE_SLICE = 1_000;
/** Most changes a catch-up fetches at once; more means a full resync. */
const DELTA_MAX = 10_000;
/** Times a write plans again after losing a race to another writer. */
const WRITE_ATTEMPTS = 8;

/** The Redis key names under `prefix`. */
export function redisKeys(prefix: string): {
  keys: string;
  hashes: string;
  version: string;
  generation: string;
  log: string;
  audit: string;
  channel: string;
} {
  return {
    keys: `${prefix}keys`,
    hashes: `${prefix}hashes`,
    version: `${prefix}version`,
    generation: `${prefix}generation`,
    log: `${prefix}log`,
    audit: `${prefix}audit`,
    channel: `${prefix}changes`,
  };
}

/**
 * Lua that appends the journal entry `entry` (a Lua expression; "" for none)
 * to the stream KEYS[k], capped at about `maxLen` entries, numbered one past
 * the last number the stream ever gave (never reused, even after a trim),
 * and sets `seq` to it; returns {'journal', error} when it cannot. Shared by
 * the commit and import scripts; it runs before their first write.
 */
export function journalAppendLua(k: number, entry: string, maxLen: string): string {
  return `
local seq = 0
if ${entry} ~= '' then
  seq = 1
  if redis.call('EXISTS', KEYS[${k}]) == 1 then
    local info = redis.pcall('XINFO', 'STREAM', KEYS[${k}])
    if info.err then return {'journal', info.err} end
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then seq = tonumber(string.match(info[i + 1], '^(%d+)')) + 1 end
    end
  end
  local added = redis.pcall('XADD', KEYS[${k}], 'MAXLEN', '~', ${maxLen}, seq .. '-0', 'e', ${entry})
  if type(added) == 'table' and added.err then return {'journal', added.err} end
end
`;
}

/**
 * KEYS: audit. ARGV: journal entry, journal length. Appends an entry that
 * goes with no change of a key (an entry's expiry), numbered like the commit
 * script's. Returns {'ok', journal seq} or {'journal', error}.
 */
const JOURNAL_APPEND = `
${journalAppendLua(1, "ARGV[1]", "ARGV[2]")}
return {'ok', tostring(seq)}
`;

/**
 * KEYS: keys, hashes, version, generation, log, audit. ARGV: generation,
 * kind, id, expected record ("" for none), new record, new secret hash, old
 * secret hash, channel, log length, journal entry ("" for none), journal
 * length, the commit's stamp (a random token the log entry carries, so a
 * replica can tell the version it holds from the same number written by
 * another history, see CATCH_UP), then pairs of an id and its record as the
 * plan read it ("" for none; any other record there is a conflict). Checks
 * everything, then writes the journal entry, before it changes anything (a
 * script that returns early is not rolled back).
 * Returns {'ok', version, journal seq (0 without an entry)} or why not.
 */
const COMMIT = `
local gen = redis.call('GET', KEYS[4])
if not gen then return {'gone'} end
if gen ~= ARGV[1] then return {'conflict'} end
for i = 13, #ARGV, 2 do
  if (redis.call('HGET', KEYS[1], ARGV[i]) or '') ~= ARGV[i + 1] then return {'conflict'} end
end
local cur = redis.call('HGET', KEYS[1], ARGV[3])
if ARGV[2] == 'create' then
  if cur then return {'conflict'} end
elseif (not cur) or cur ~= ARGV[4] then
  return {'conflict'}
end
if ARGV[2] ~= 'delete' then
  local owner = redis.call('HGET', KEYS[2], ARGV[6])
  if owner and owner ~= ARGV[3] then return {'duplicate'} end
end
${journalAppendLua(6, "ARGV[10]", "ARGV[11]")}
if ARGV[2] ~= 'create' then redis.call('HDEL', KEYS[2], ARGV[7]) end
if ARGV[2] == 'delete' then
  redis.call('HDEL', KEYS[1], ARGV[3])
else
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[5])
  redis.call('HSET', KEYS[2], ARGV[6], ARGV[3])
end
local v = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[9], v .. '-0', 'id', ARGV[3], 'n', ARGV[12])
redis.call('PUBLISH', ARGV[8], gen .. ' ' .. v)
return {'ok', tostring(v), tostring(seq)}
`;

/**
 * KEYS: keys, version, generation, log. ARGV: the caller's version, most
 * changes, the caller's generation and the stamp of its version ("": not
 * known, nothing checked). Returns {'gone'}; {'diverged', gen, v} when the
 * log entry of the caller's version, same generation, carries another stamp
 * (the store came back from an older copy and was written past that version
 * again); else the stamp of the store's version ("" when its entry carries
 * none) after gen and v: {'same', gen, v, stamp}, {'full', gen, v, stamp}
 * (the log no longer reaches back, or too many changes) or {'delta', gen, v,
 * stamp, id1, record1, ...} with "" for a deleted key; all read at one instant.
 */
const CATCH_UP = `
local gen = redis.call('GET', KEYS[3])
if not gen then return {'gone'} end
local v = redis.call('GET', KEYS[2]) or '0'
local from = tonumber(ARGV[1])
local function stampOf(entries, at)
  local e = entries[1]
  if not e or tonumber(string.match(e[1], '^(%d+)')) ~= at then return '' end
  for i = 1, #e[2], 2 do
    if e[2][i] == 'n' then return e[2][i + 1] end
  end
  return ''
end
if ARGV[4] ~= '' and ARGV[3] == gen and from > 0 then
  local held = stampOf(redis.call('XRANGE', KEYS[4], from, from, 'COUNT', 1), from)
  if held ~= '' and held ~= ARGV[4] then return {'diverged', gen, v} end
end
local stamp = stampOf(redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1), tonumber(v))
if tonumber(v) <= from then return {'same', gen, v, stamp} end
if tonumber(v) - from > tonumber(ARGV[2]) then return {'full', gen, v, stamp} end
local entries = redis.call('XRANGE', KEYS[4], (from + 1) .. '-0', '+')
if #entries == 0 or tonumber(string.match(entries[1][1], '^(%d+)')) ~= from + 1 then return {'full', gen, v, stamp} end
local out = {'delta', gen, v, stamp}
local seen = {}
for _, e in ipairs(entries) do
  local id = e[2][2]
  if not seen[id] then
    seen[id] = true
    table.insert(out, id)
    table.insert(out, redis.call('HGET', KEYS[1], id) or '')
  end
end
return out
`;

/** A new commit stamp: random, so two histories never write the same one (see COMMIT). */
export function newStamp(): string {
  return randomBytes(8).toString("hex");
}

/** KEYS: version, generation. Returns {gen or false, version}. */
const HEAD = `return {redis.call('GET', KEYS[2]) or '', redis.call('GET', KEYS[1]) or '0'}`;

type Client = ReturnType<typeof createClient>;

/** The store's Redis connection, lent to the admin state shared through the same Redis (sessions, codes, attempts). */
export type RedisClient = Client;

/** The changes of a {@link CATCH_UP} `delta` reply, in order ("" for a deleted key). */
function deltaChanges(reply: readonly string[]): KeyChange[] {
  const changes: KeyChange[] = [];
  for (let i = 4; i + 1 < reply.length; i += 2) {
    const id = reply[i] as string;
    const text = reply[i + 1] as string;
    changes.push(text === "" ? { kind: "delete", id } : { kind: "update", record: readable(id, text) });
  }
  return changes;
}

function strings(reply: unknown): string[] {
  if (!Array.isArray(reply)) throw new Error("internal: unexpected reply from a keyfence script");
  return reply.map((x) => (typeof x === "string" ? x : String(x)));
}

/** One page of an HSCAN: the cursor to ask with next ("0": done) and the fields and values, alternating. */
export interface ScanPage {
  readonly cursor: string;
  readonly items: readonly string[];
}

/**
 * One HSCAN page of hash `key` as Redis sends it. Read raw, not through the
 * client's `hScan`, which makes an object per entry: loading 1,000,000 keys
 * through it, 230–280 MB of page text reached the old generation in most runs
 * (about 37 MB raw), held there until the next full collection, and a replica
 * that started serving before one ran held 730–760 MB instead of about 600
 * (BENCHMARKS.md, "Where the garbage came from").
 */
export async function scanPage(client: Client, key: string, cursor: string, count: number): Promise<ScanPage> {
  const reply: unknown = await client.sendCommand(["HSCAN", key, cursor, "COUNT", String(count)]);
  if (Array.isArray(reply) && reply.length === 2) {
    const [next, items] = reply as unknown[];
    if (typeof next === "string" && Array.isArray(items) && items.length % 2 === 0) {
      if (items.every((x) => typeof x === "string")) return { cursor: next, items };
    }
  }
  throw new Error("unexpected reply to HSCAN");
}

/** The keys-file text of `records` (JSON flow mappings are valid YAML), for the snapshot file and exports. */
export function keysFileText(records: Iterable<KeyRecord>): string {
  const lines = ["keys:"];
  for (const r of records) lines.push(`  - ${JSON.stringify(keysFileEntry(r))}`);
  if (lines.length === 1) return "keys: []\n";
  return `${lines.join("\n")}\n`;
}

/** {@link keysFileText} in parts of 5,000 records, yielding to the event loop between them (a million keys take seconds). */
export async function keysFileParts(records: Iterable<KeyRecord>): Promise<string[]> {
  const parts = ["keys:\n"];
  let lines: string[] = [];
  for (const r of records) {
    lines.push(`  - ${JSON.stringify(keysFileEntry(r))}\n`);
    if (lines.length === 5_000) {
      parts.push(lines.join(""));
      lines = [];
      await yieldTurn();
    }
  }
  parts.push(lines.join(""));
  return parts.length === 2 && parts[1] === "" ? ["keys: []\n"] : parts;
}

/** A record as keys-file fields. */
export function keysFileEntry(r: KeyRecord): Record<string, unknown> {
  const out: Record<string, unknown> = {
    id: r.id,
    name: r.name,
    secret_sha256: hexOfDigest(r.secretDigest),
    scopes: r.scopes,
    ip_allow_list: entryItems(r.ipAllowList, r.entryDetails),
  };
  if (r.mode !== undefined) out["mode"] = r.mode;
  if (r.createdAt !== undefined) out["created_at"] = r.createdAt;
  if (r.updatedAt !== undefined) out["updated_at"] = r.updatedAt;
  return out;
}

/** Key store shared by every replica through Redis. */
export class RedisKeyStore implements KeyStore {
  private current: Snapshot | undefined;
  private readonly cache: MatcherCache;
  private readonly names: ReturnType<typeof redisKeys>;
  private readonly listeners = new Set<StoreListener>();
  private readonly commitHooks: (() => Promise<void>)[] = [];
  private client: Client | undefined;
  private subscriber: Client | undefined;
  /** The generation and version the snapshot reflects ("" before the first sync with Redis). */
  private generation = "";
  private version = 0;
  /** The version this replica had when it found the store's lower under the same generation (see {@link syncNow}). */
  private rolledBackFrom: number | undefined;
  /** The stamp of the log entry of `version` ("" when not known): which history that version belongs to. */
  private stamp = "";
  private state: StoreHealth = { up: false, reason: "not connected yet" };
  /** The eviction policy last warned about (see checkEviction). */
  private evictionWarned: string | undefined;
  private connected = false;
  /** Snapshot changes run one at a time (catch-ups, resyncs, own commits). */
  private applying: Promise<unknown> = Promise.resolve();
  /** Writes of this process run one at a time. */
  private writing: Promise<unknown> = Promise.resolve();
  /** A catch-up runs; another was asked for since it started. */
  private syncing = false;
  private syncWanted = false;
  private timer: NodeJS.Timeout | undefined;
  private snapshotTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private watching = false;
  private readonly compactor = new Compactor(
    () => this.current,
    (s) => {
      this.current = s;
    },
  );

  constructor(private readonly options: RedisKeyStoreOptions) {
    this.cache = options.cache ?? new MatcherCache();
    this.names = redisKeys(options.prefix);
  }

  get snapshot(): Snapshot {
    if (this.current === undefined) throw new Error("key store used before load()");
    return this.current;
  }

  get matcherCache(): MatcherCache {
    return this.cache;
  }

  get health(): StoreHealth {
    return this.state;
  }

  /** The shared audit log: a capped stream under the prefix, written by the commit script. */
  readonly journal: Journal = {
    page: (limit, before) => {
      if (before !== undefined && before <= 1) return Promise.resolve([]);
      // An incomplete id as the end of XREVRANGE means its highest sequence: below `before` exactly.
      const end = before === undefined ? "+" : String(before - 1);
      return this.command(async (c) => {
        const rows = await c.xRevRange(this.names.audit, end, "-", { COUNT: limit });
        return rows.map((r) => ({ seq: Number(r.id.split("-")[0]), text: r.message["e"] ?? "" }));
      });
    },
    append: async (text) => {
      if (text === "") throw new JournalWriteError("an empty journal entry");
      const reply = strings(
        await this.command((c) =>
          c.eval(JOURNAL_APPEND, {
            keys: [this.names.audit],
            arguments: [text, String(this.options.journalMaxLen ?? DEFAULT_JOURNAL_MAX_LEN)],
          }),
        ),
      );
      const [kind, v] = reply;
      if (kind !== "ok")
        throw new JournalWriteError(`cannot append to the audit stream ${this.names.audit}: ${v ?? ""}`);
      return Number(v);
    },
  };

  get description(): string {
    return `Redis ${this.options.displayUrl} (prefix ${JSON.stringify(this.options.prefix)})`;
  }

  /** The key prefix under which this store, and the admin state shared beside it, live. */
  get prefix(): string {
    return this.options.prefix;
  }

  /**
   * Runs `command` on the store's connection. Throws {@link StoreUnavailableError}
   * when Redis is not connected, the command fails or no answer comes within
   * `commandTimeoutMs`, so callers fail closed.
   */
  async command<T>(command: (client: RedisClient) => Promise<T>): Promise<T> {
    const client = this.client;
    if (client === undefined || !this.connected || this.closed) {
      throw new StoreUnavailableError(this.state.reason || `the key store ${this.description} is unavailable`);
    }
    try {
      return await this.timed(command(client));
    } catch (err) {
      throw new StoreUnavailableError(`the key store ${this.description} is unreachable: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  /** The store version the snapshot reflects (0 before the first sync). */
  get storeVersion(): number {
    return this.version;
  }

  subscribe(listener: StoreListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  onCommit(hook: () => Promise<void>): void {
    this.commitHooks.push(hook);
  }

  /**
   * Connects and loads every record; when Redis cannot be reached (or holds
   * no keyfence data) within `connectTimeoutMs`, starts from the snapshot
   * file if one is configured, else rejects naming what to do.
   */
  async load(): Promise<Snapshot> {
    const client = this.makeClient();
    this.client = client;
    const timeoutMs = this.options.connectTimeoutMs ?? 5_000;
    let why = "";
    try {
      await withTimeout(client.connect(), timeoutMs, `no connection within ${timeoutMs} ms`);
      const head = strings(
        await this.timed(client.eval(HEAD, { keys: [this.names.version, this.names.generation], arguments: [] })),
      );
      if (head[0] === "") why = `it holds no keyfence data under the prefix ${JSON.stringify(this.options.prefix)}`;
      else {
        await this.sync("load");
        if (this.current !== undefined && this.state.up) return this.current;
        why = this.state.reason;
      }
    } catch (err) {
      why = (err as Error).message;
    }
    const reason = `the key store ${this.description} is unavailable: ${why}`;
    this.setHealth({ up: false, reason });
    const file = this.options.snapshotFile;
    if (file === undefined) {
      await this.close();
      throw new StoreLoadError([
        {
          message: `${reason}. Start Redis (or initialize it with \`keyfence keys import --config FILE --from KEYS.yaml\`), or set keys.redis.snapshot_file to start from the last good snapshot`,
        },
      ]);
    }
    const snapshot = await this.readSnapshotFile(file, reason);
    this.current = snapshot;
    this.emitChange(snapshot, "load");
    this.options.notice?.(
      "store_snapshot_file",
      `${reason}; started from the snapshot file ${file} (${snapshot.size} keys); writes answer 503 until the store is back`,
      { file, keys: snapshot.size },
    );
    return snapshot;
  }

  watch(): void {
    if (this.watching || this.closed) return;
    this.watching = true;
    void this.startSubscriber();
    this.timer = setInterval(() => {
      if (this.connected) this.requestSync();
    }, this.options.syncIntervalMs ?? DEFAULT_SYNC_INTERVAL_MS);
    this.timer.unref();
  }

  refresh(): Promise<void> {
    if (!this.connected) return Promise.resolve();
    return this.sync("reload");
  }

  transact<T>(plan: (snapshot: Snapshot) => Plan<T> | Promise<Plan<T>>): Promise<T> {
    const run = this.writing.then(
      () => this.write(plan),
      () => this.write(plan),
    );
    this.writing = run.catch(() => undefined);
    return run;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (this.snapshotTimer) clearTimeout(this.snapshotTimer);
    await this.writing.catch(() => undefined);
    await this.applying.catch(() => undefined);
    for (const c of [this.subscriber, this.client]) {
      if (c === undefined) continue;
      try {
        c.destroy();
      } catch {
        // already closed
      }
    }
    this.subscriber = undefined;
    this.client = undefined;
  }

  private makeClient(): Client {
    const client = createClient({
      url: this.options.url,
      disableOfflineQueue: true,
      pingInterval: 5_000,
      commandOptions: { timeout: this.options.commandTimeoutMs ?? 3_000 },
      socket: {
        connectTimeout: this.options.commandTimeoutMs ?? 3_000,
        reconnectStrategy: (retries: number) => Math.min(50 * 2 ** Math.min(retries, 5), 1_000),
      },
    });
    client.on("error", (err: Error) => {
      if (this.closed) return;
      this.connected = false;
      this.setHealth({ up: false, reason: `the key store ${this.description} is unreachable: ${err.message}` });
    });
    client.on("end", () => {
      this.connected = false;
    });
    client.on("ready", () => {
      this.connected = true;
      // Connect and reconnect: catch up on whatever happened meanwhile.
      if (this.current !== undefined) this.requestSync();
      void this.checkEviction(client);
    });
    return client;
  }

  /**
   * Warns (once per policy seen) when the server may evict keys under memory
   * pressure: a record, the generation marker, a session or a code's one-use
   * marker could then vanish without a write. Read on every connect, as a
   * failover may bring another server; a server that refuses INFO is left alone.
   */
  private async checkEviction(client: Client): Promise<void> {
    let policy: string | undefined;
    try {
      policy = /^maxmemory_policy:(\S+)/m.exec(await this.timed(client.info("memory")))?.[1];
    } catch {
      return;
    }
    if (policy === undefined || policy === "noeviction" || policy === this.evictionWarned) return;
    this.evictionWarned = policy;
    this.options.notice?.(
      "store_eviction_policy",
      `the key store ${this.description} has maxmemory-policy ${policy}: under memory pressure Redis may evict keyfence's records, sessions or confirmation-code markers; set maxmemory-policy noeviction`,
      { maxmemory_policy: policy },
    );
  }

  private async startSubscriber(): Promise<void> {
    const main = this.client;
    if (main === undefined) return;
    const sub = main.duplicate();
    this.subscriber = sub;
    sub.on("error", () => {
      // The main client reports the outage; this one reconnects by itself.
    });
    sub.on("ready", () => {
      if (this.current !== undefined) this.requestSync();
    });
    try {
      await sub.connect();
      await sub.subscribe(this.names.channel, (message: string) => this.onMessage(message));
    } catch {
      // Not connected yet: the client keeps retrying and resubscribes when it connects.
    }
  }

  private onMessage(message: string): void {
    const [gen, v] = message.split(" ");
    // A lower version too: the store may have gone back (see syncNow).
    if (gen !== this.generation || Number(v) !== this.version) this.requestSync();
  }

  /**
   * A catch-up soon; requests that arrive while one runs coalesce into one
   * more run after it (never into the running one, which may have read the
   * version already). A failure only shows in the health.
   */
  private requestSync(): void {
    this.syncWanted = true;
    if (this.syncing) return;
    this.syncing = true;
    void (async () => {
      try {
        while (this.syncWanted && !this.closed) {
          this.syncWanted = false;
          await this.sync("reload").catch(() => undefined);
        }
      } finally {
        this.syncing = false;
      }
    })();
  }

  /**
   * `work` (a command to the store), or a rejection once `commandTimeoutMs`
   * passes without an answer. node-redis times a command out only until it is
   * written to the socket: a Redis that hangs with the connection open (a
   * stopped process, a stalled network) would otherwise leave a catch-up, and
   * every write and health report queued behind it, waiting until it wakes.
   */
  private timed<T>(work: Promise<T>): Promise<T> {
    const ms = this.options.commandTimeoutMs ?? 3_000;
    return withTimeout(work, ms, `no answer within ${ms} ms`);
  }

  /** Brings the snapshot to the store's version (delta or full resync); records the store's health. */
  private sync(cause: ChangeCause): Promise<void> {
    const run = this.applying.then(() => this.syncNow(cause));
    this.applying = run.catch(() => undefined);
    return run;
  }

  private async syncNow(cause: ChangeCause): Promise<void> {
    const client = this.client;
    if (client === undefined || this.closed) return;
    try {
      const reply = strings(
        await this.timed(
          client.eval(CATCH_UP, {
            keys: [this.names.keys, this.names.version, this.names.generation, this.names.log],
            arguments: [
              String(this.generation === "" ? -1 : this.version),
              String(DELTA_MAX),
              this.generation,
              this.stamp,
            ],
          }),
        ),
      );
      const [kind, gen = "", v = "0"] = reply;
      if (kind === "gone") {
        this.setHealth({
          up: false,
          reason: `the key store ${this.description} holds no keyfence data (its generation marker is gone, as after a restart without persistence); the last snapshot keeps serving until an operator restores it with \`keyfence keys import\``,
        });
        return;
      }
      // The store behind the version this replica already holds, same generation: Redis came back from an older
      // copy and lost changes. Adopting it would bring back what they removed (a looser list, a revoked key),
      // so it is an outage, like vanished data, until an operator restores the keys under a new generation.
      if (gen === this.generation && this.current !== undefined && Number(v) < this.version) {
        this.rolledBackFrom ??= this.version;
      }
      // The same number written by another history: it went back, then was written past this replica's version again.
      if (kind === "diverged" && this.current !== undefined) this.rolledBackFrom ??= this.version;
      // Until a new generation: a store pushed past this replica's version again has not got back what it lost.
      if (gen === this.generation && this.rolledBackFrom !== undefined) {
        this.setHealth({
          up: false,
          reason: `the key store ${this.description} went back to an older state (version ${v}, this replica had ${this.rolledBackFrom}; restarted from an older copy?); the last snapshot keeps serving until an operator restores the keys under a new generation (delete the prefix's keys, then \`keyfence keys import\`)`,
        });
        return;
      }
      if (gen !== this.generation || kind === "full" || this.current === undefined) {
        await this.fullResync(client, cause);
      } else if (kind === "delta") {
        const changes = deltaChanges(reply);
        const next = this.snapshot.withChanges(changes);
        this.version = Number(v);
        this.stamp = reply[3] ?? "";
        this.install(next, cause, changes);
      } else if (kind === "same" && Number(v) === this.version && this.stamp === "") {
        this.stamp = reply[3] ?? "";
      }
      this.setHealth({ up: true, reason: "" });
    } catch (err) {
      this.setHealth({
        up: false,
        reason:
          err instanceof UnreadableRecordError
            ? `the key store ${this.description} ${err.message}; the last snapshot keeps serving until the record is fixed (\`keyfence keys import\`) or every replica runs a version that reads it`
            : `the key store ${this.description} is unreachable: ${(err as Error).message}`,
      });
      throw new StoreUnavailableError(this.state.reason, { cause: err });
    }
  }

  /**
   * Reads every record (HSCAN in batches, yielding between them), then
   * catches up on changes made meanwhile. Over a snapshot already loaded,
   * what differs is applied as changes ({@link ResyncDiff}); past
   * {@link DELTA_MAX} differences the records are read again into a new
   * snapshot.
   */
  private async fullResync(client: Client, cause: ChangeCause): Promise<void> {
    const started = Date.now();
    let rebuild = this.current === undefined;
    for (let attempt = 0; attempt < 3; attempt++) {
      const head = strings(
        await this.timed(client.eval(HEAD, { keys: [this.names.version, this.names.generation], arguments: [] })),
      );
      const gen = head[0] ?? "";
      const v = Number(head[1] ?? "0");
      const previous = this.current;
      const diff = rebuild || previous === undefined ? undefined : await ResyncDiff.over(previous, DELTA_MAX);
      const builder = diff === undefined ? new SnapshotBuilder(this.cache, previous) : undefined;
      let fits = true;
      // The next batch is asked for before this one is decoded, so Redis and this process work at once.
      let next = this.timed(scanPage(client, this.names.keys, "0", SCAN_COUNT));
      let cursor: string;
      do {
        const page = await next;
        cursor = page.cursor;
        if (cursor !== "0") {
          next = this.timed(scanPage(client, this.names.keys, cursor, SCAN_COUNT));
          // Awaited after this batch is decoded; a failure meanwhile must not count as unhandled.
          next.catch(() => undefined);
        }
        const items = page.items;
        for (let i = 0; i < items.length && fits; i += 2) {
          const id = items[i] as string;
          const text = items[i + 1] as string;
          if (diff !== undefined) fits = diff.see(id, text);
          else builder?.add(readableReusing(previous?.record(id), id, text));
          if ((i + 2) % (2 * DECODE_SLICE) === 0) await yieldTurn();
        }
        await yieldTurn();
      } while (cursor !== "0" && fits);
      const changes = fits ? await diff?.finish() : undefined;
      if (diff !== undefined && changes === undefined) {
        // Too many differences to apply as changes: read again, into a new snapshot (not counted as an attempt).
        rebuild = true;
        attempt--;
        continue;
      }
      // What changed during the scan (HSCAN may or may not have seen it) comes from the log.
      const reply = strings(
        await this.timed(
          client.eval(CATCH_UP, {
            keys: [this.names.keys, this.names.version, this.names.generation, this.names.log],
            arguments: [String(v), String(DELTA_MAX), "", ""],
          }),
        ),
      );
      const [kind, gen2 = "", v2 = "0"] = reply;
      if (kind === "gone") throw new Error("its data vanished during a resync");
      if (gen2 !== gen || kind === "full") continue;
      const logged = kind === "delta" ? deltaChanges(reply) : [];
      let snapshot: Snapshot;
      let applied: KeyChange[] | undefined;
      if (builder !== undefined) {
        for (const c of logged) {
          if (c.kind === "delete") builder.remove(c.id);
          else builder.add(c.record);
        }
        snapshot = builder.finish();
        // Its sorted ids now, a slice at a time, before it serves: the next resync's diff needs them, and building
        // them then would put the scavenges of a million young ids into the turns of a replica under load.
        await snapshot.sortedIds();
      } else {
        applied = [...(changes ?? []), ...logged];
        snapshot = (previous as Snapshot).withChanges(applied);
      }
      this.generation = gen;
      this.version = Number(v2);
      this.stamp = reply[3] ?? "";
      this.rolledBackFrom = undefined;
      this.install(snapshot, cause, applied);
      if (cause !== "load") {
        this.options.notice?.("store_resynced", `resynced ${snapshot.size} keys from ${this.description}`, {
          keys: snapshot.size,
          ms: Date.now() - started,
        });
      }
      return;
    }
    throw new Error("the store changed too fast to resync (3 attempts)");
  }

  private async write<T>(plan: (snapshot: Snapshot) => Plan<T> | Promise<Plan<T>>): Promise<T> {
    const client = this.client;
    for (let attempt = 0; attempt < WRITE_ATTEMPTS; attempt++) {
      if (client === undefined || !this.connected || this.current === undefined || this.generation === "") {
        throw new StoreUnavailableError(this.state.reason || `the key store ${this.description} is unavailable`);
      }
      // The freshest snapshot first (one round trip), so a plan rarely loses a race.
      await this.sync("reload");
      if (!this.state.up) throw new StoreUnavailableError(this.state.reason);
      const base = this.snapshot;
      const p = await plan(base);
      if (p.change === undefined) {
        if (p.afterCommit) await p.afterCommit({});
        return p.result;
      }
      const change = p.change;
      const id = changedId(change);
      const before = base.record(id);
      const stamp = newStamp();
      let reply: string[];
      try {
        reply = strings(
          await client.eval(COMMIT, {
            keys: [
              this.names.keys,
              this.names.hashes,
              this.names.version,
              this.names.generation,
              this.names.log,
              this.names.audit,
            ],
            arguments: [
              this.generation,
              change.kind,
              id,
              before === undefined ? "" : encodeRecord(before),
              change.kind === "delete" ? "" : encodeRecord(change.record),
              change.kind === "delete" ? "" : hexOfDigest(change.record.secretDigest),
              before === undefined ? "" : hexOfDigest(before.secretDigest),
              this.names.channel,
              String(LOG_MAX),
              p.journal ?? "",
              String(this.options.journalMaxLen ?? DEFAULT_JOURNAL_MAX_LEN),
              stamp,
              ...(p.reads ?? []).flatMap((r) => [r.id, r.record === undefined ? "" : encodeRecord(r.record)]),
            ],
          }),
        );
      } catch (err) {
        await p.onAbort?.().catch(() => undefined);
        const reason = `the key store ${this.description} is unreachable: ${(err as Error).message}`;
        this.setHealth({ up: false, reason });
        throw new StoreUnavailableError(reason, { cause: err });
      }
      const [kind, v, seq] = reply;
      if (kind !== "ok") await p.onAbort?.().catch(() => undefined);
      if (kind === "conflict") continue; // another writer got there first: plan again on its result
      if (kind === "gone") {
        await this.sync("reload").catch(() => undefined);
        throw new StoreUnavailableError(this.state.reason);
      }
      if (kind === "journal") {
        throw new JournalWriteError(`cannot append to the audit stream ${this.names.audit}: ${v ?? ""}`);
      }
      if (kind === "duplicate") {
        throw new StoreConflictError("another key already has this secret", [
          { message: "another key already has this secret" },
        ]);
      }
      await this.applyOwn(change, Number(v), stamp);
      for (const hook of this.commitHooks) await hook();
      if (p.afterCommit) await p.afterCommit(p.journal === undefined ? {} : { journalSeq: Number(seq) });
      return p.result;
    }
    throw new StoreConflictError("the key changed on other replicas too often; try again", []);
  }

  /** Puts this process's own committed change in force (or catches up when others committed in between). */
  private applyOwn(change: KeyChange, v: number, stamp: string): Promise<void> {
    const run = this.applying.then(async () => {
      if (v === this.version + 1) {
        const next = this.snapshot.withChange(change);
        this.version = v;
        this.stamp = stamp;
        this.install(next, "write", [change]);
      } else if (v !== this.version) {
        // Others committed in between, or (lower) the store went back to an older copy: syncNow tells which.
        await this.syncNow("write");
      }
    });
    this.applying = run.catch(() => undefined);
    return run;
  }

  private install(snapshot: Snapshot, cause: ChangeCause, changes?: readonly KeyChange[]): void {
    this.current = snapshot;
    this.emitChange(snapshot, cause, changes);
    this.scheduleSnapshotFile();
    this.compactor.changed();
  }

  private emitChange(snapshot: Snapshot, cause: ChangeCause, changes?: readonly KeyChange[]): void {
    for (const l of this.listeners) l.change?.(snapshot, cause, changes);
  }

  private setHealth(next: StoreHealth): void {
    const was = this.state;
    this.state = next;
    if (was.up !== next.up || (!next.up && was.reason !== next.reason)) {
      for (const l of this.listeners) l.health?.(next);
    }
    // The first load and every recovery write the file too: a replica that never saw a change still leaves one.
    if (!was.up && next.up) this.scheduleSnapshotFile();
  }

  /** Writes the snapshot file a moment after changes settle (never on the request path). */
  private scheduleSnapshotFile(): void {
    const file = this.options.snapshotFile;
    if (file === undefined || this.closed || !this.state.up) return;
    if (this.snapshotTimer) return;
    this.snapshotTimer = setTimeout(() => {
      this.snapshotTimer = undefined;
      const snap = this.current;
      if (snap === undefined || !this.state.up) return;
      keysFileParts(snap.iterate())
        .then((parts) => writeFileAtomic(file, parts))
        .catch((err: unknown) =>
          this.options.notice?.(
            "store_snapshot_file_failed",
            `cannot write the snapshot file ${file}: ${(err as Error).message}`,
          ),
        );
    }, 1_000);
    this.snapshotTimer.unref();
  }

  private async readSnapshotFile(file: string, reason: string): Promise<Snapshot> {
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      await this.close();
      throw new StoreLoadError([
        { message: `${reason}, and the snapshot file ${file} cannot be read: ${(err as Error).message}` },
      ]);
    }
    const parsed = parseKeysFile(file, text, this.options.maxEntries);
    if (!parsed.ok) {
      await this.close();
      throw new StoreLoadError([
        { message: `${reason}, and the snapshot file ${file} is invalid` },
        ...parsed.problems,
      ]);
    }
    // Keep connecting in the background: the store catches up once Redis is back.
    return new Snapshot(parsed.keys, this.cache);
  }
}

function withTimeout<T>(work: Promise<T>, ms: number, message: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(message)), ms);
    work.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}
