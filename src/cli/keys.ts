/**
 * `keyfence keys import` and `keyfence keys export` (SPEC §6): copy a keys
 * file into the configured store (idempotent by id; any invalid entry
 * refuses the whole import, naming file:line:col) and write the store as a
 * keys file. A progress bar shows on a terminal (stderr).
 */
import { hostname, userInfo } from "node:os";
import { resolve } from "node:path";
import { SingleBar } from "cli-progress";
import { encodeJournalEntry } from "../admin/audit.js";
import { AUDIT_DEFAULTS } from "../config/audit.js";
import { displayPath, ENV, keyStoreName, loadConfig, type Config } from "../config/config.js";
import { lockBeside } from "../util/lock.js";
import { parseKeysFile, readKeysText, type KeyRecord } from "../store/keysfile.js";
import { keysFileText } from "../store/redis/store.js";
import { connectOnce, exportRecords, ImportRefused, importRecords, IMPORTED_IDS } from "../store/redis/io.js";
import { writeFileAtomic } from "../util/atomic.js";
import { formatProblem } from "../util/yaml.js";

const USAGE = `usage: keyfence keys import [--config FILE] --from KEYS.yaml
       keyfence keys export [--config FILE] [--to OUT.yaml]   (stdout without --to)`;

/** Parsed `keys` arguments. */
interface KeysArgs {
  readonly action: "import" | "export";
  readonly config: string;
  readonly from: string | undefined;
  readonly to: string | undefined;
}

function parse(argv: readonly string[]): KeysArgs | string {
  const action = argv[0];
  if (action !== "import" && action !== "export") return "keys: the first argument is import or export";
  const opts: Record<string, string> = {};
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i] as string;
    const eq = a.indexOf("=");
    const name = eq > 0 ? a.slice(0, eq) : a;
    if (name !== "--config" && name !== "-c" && name !== "--from" && name !== "--to") return `unknown option ${a}`;
    const value = eq > 0 ? a.slice(eq + 1) : argv[++i];
    if (value === undefined || value === "") return `${name} needs a file`;
    opts[name === "-c" ? "--config" : name] = value;
  }
  if (action === "import" && opts["--from"] === undefined) return "keys import needs --from KEYS.yaml";
  if (action === "export" && opts["--from"] !== undefined) return "keys export takes --to, not --from";
  if (action === "import" && opts["--to"] !== undefined) return "keys import takes --from, not --to";
  return {
    action,
    config: opts["--config"] ?? process.env[ENV.config] ?? "config/keyfence.yaml",
    from: opts["--from"],
    to: opts["--to"],
  };
}

/** A progress bar on a terminal; nothing otherwise. */
function progressBar(label: string): { update(done: number, total: number): void; stop(): void } {
  if (!process.stderr.isTTY) return { update: () => undefined, stop: () => undefined };
  const bar = new SingleBar({
    format: `${label} [{bar}] {percentage}% | {value}/{total} keys | {eta_formatted} left`,
    stream: process.stderr,
    hideCursor: true,
  });
  let started = false;
  return {
    update(done, total) {
      if (!started) {
        bar.start(total, 0);
        started = true;
      }
      bar.setTotal(total);
      bar.update(done);
    },
    stop() {
      if (started) bar.stop();
    },
  };
}

/** Runs `keyfence keys ...`; resolves with the exit code. */
export async function runKeys(argv: readonly string[]): Promise<number> {
  const args = parse(argv);
  if (typeof args === "string") {
    process.stderr.write(`keyfence: ${args}\n${USAGE}\n`);
    return 2;
  }
  const loaded = await loadConfig(args.config);
  if (!loaded.ok) {
    for (const p of loaded.problems) process.stderr.write(`${formatProblem(p)}\n`);
    return 1;
  }
  try {
    return args.action === "import"
      ? await importKeys(loaded.config, args.from ?? "")
      : await exportKeys(loaded.config, args.to);
  } catch (err) {
    process.stderr.write(`keyfence keys ${args.action}: ${(err as Error).message}\n`);
    return 1;
  }
}

async function importKeys(config: Config, from: string): Promise<number> {
  const file = resolve(from);
  const name = displayPath(file);
  const read = await readKeysText(file, name);
  const parsed = read.ok ? parseKeysFile(name, read.text, config.keys.maxEntries) : read;
  if (!parsed.ok) {
    for (const p of parsed.problems) process.stderr.write(`${formatProblem(p)}\n`);
    process.stderr.write(`keyfence keys import: ${name} is invalid; nothing was imported\n`);
    return 1;
  }
  const bar = progressBar("import");
  const store = config.keys.store;
  let summary: string;
  try {
    if (store.kind === "redis") {
      const client = await connectOnce(store.url);
      try {
        const r = await importRecords(client, store.prefix, parsed.keys, {
          progress: (d, t) => bar.update(d, t),
          journal: { template: importEntry(file), maxLen: config.admin?.audit.maxEntries ?? AUDIT_DEFAULTS.maxEntries },
        });
        summary = `${r.changed} keys written, ${r.unchanged} unchanged${r.initialized ? " (the store was initialized)" : ""}`;
      } finally {
        client.destroy();
      }
    } else {
      summary = await importIntoFile(config, parsed.keys, (d, t) => bar.update(d, t));
    }
  } catch (err) {
    if (err instanceof ImportRefused) {
      bar.stop();
      process.stderr.write(
        `keyfence keys import: ${err.message}${err.imported === 0 ? "; nothing was imported" : ""}\n`,
      );
      return 1;
    }
    throw err;
  } finally {
    bar.stop();
  }
  process.stderr.write(`imported ${name} into ${keyStoreName(config)}: ${summary}\n`);
  return 0;
}

/** Who runs this command: `user@host` (the uid when the user has no name). */
function cliActor(): string {
  let user: string;
  try {
    user = userInfo().username;
  } catch {
    user = `uid ${process.getuid?.() ?? "?"}`;
  }
  return `${user}@${hostname()}`;
}

/**
 * The audit entry of each import batch into Redis (its ids stand in as
 * IMPORTED_IDS): who imported which file, when, and the ids written. The
 * records' earlier values are not in it (export first to keep them).
 */
function importEntry(from: string): string {
  return encodeJournalEntry({
    time: new Date().toISOString(),
    action: "import",
    actor: { type: "cli", id: cliActor() },
    client_ip: "",
    key_id: "",
    ip_allow_list: { before: null, after: null },
    changes: {},
    confirmed: false,
    import: { from, key_ids: [IMPORTED_IDS] },
  });
}

/** Merges `records` into the keys file by id, under the lock the running processes take. */
async function importIntoFile(
  config: Config,
  records: readonly KeyRecord[],
  progress: (done: number, total: number) => void,
): Promise<string> {
  const file = config.keys.file;
  const release = await lockBeside(file, (err) => {
    // As proper-lockfile does by default: a lock lost mid-import ends the import before it writes.
    throw err;
  });
  try {
    const read = await readKeysText(file, config.keys.displayName);
    const current = read.ok ? parseKeysFile(config.keys.displayName, read.text, config.keys.maxEntries) : read;
    if (!current.ok) {
      throw new ImportRefused(
        `the keys file is invalid:\n${current.problems.map((p) => formatProblem(p)).join("\n")}\n(fix it first)`,
      );
    }
    const byId = new Map(current.keys.map((k) => [k.id, k]));
    let changed = 0;
    for (const r of records) {
      const old = byId.get(r.id);
      if (old === undefined || keysFileText([old]) !== keysFileText([r])) changed++;
      byId.set(r.id, r);
    }
    progress(records.length, records.length);
    const text = keysFileText(byId.values());
    const check = parseKeysFile(config.keys.displayName, text, config.keys.maxEntries);
    if (!check.ok) {
      throw new ImportRefused(
        `the merged keys file would be invalid: ${check.problems.map((p) => p.message).join("; ")}`,
      );
    }
    if (changed > 0) await writeFileAtomic(file, text);
    return `${changed} keys written, ${records.length - changed} unchanged`;
  } finally {
    await release();
  }
}

async function exportKeys(config: Config, to: string | undefined): Promise<number> {
  const bar = progressBar("export");
  const store = config.keys.store;
  let records: KeyRecord[];
  try {
    if (store.kind === "redis") {
      const client = await connectOnce(store.url);
      try {
        records = await exportRecords(client, store.prefix, (d, t) => bar.update(d, t));
      } finally {
        client.destroy();
      }
    } else {
      const read = await readKeysText(config.keys.file, config.keys.displayName);
      const parsed = read.ok ? parseKeysFile(config.keys.displayName, read.text, config.keys.maxEntries) : read;
      if (!parsed.ok) {
        for (const p of parsed.problems) process.stderr.write(`${formatProblem(p)}\n`);
        return 1;
      }
      records = parsed.keys;
    }
  } finally {
    bar.stop();
  }
  const text = keysFileText(records);
  if (to === undefined) process.stdout.write(text);
  else {
    await writeFileAtomic(resolve(to), text);
    process.stderr.write(`exported ${records.length} keys from ${keyStoreName(config)} to ${to}\n`);
  }
  return 0;
}
