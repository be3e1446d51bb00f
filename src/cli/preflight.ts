/**
 * Start-up checks that turn a failure the first management API write would
 * meet (a 500 after the sidecar looked healthy) into a refusal to start that
 * names the cause.
 */
import { open, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import type { Config } from "../config/config.js";
import { sideFiles } from "./sidecar.js";

/** Who this process runs as, for messages: "uid 1000" (or "this user" where there are no uids). */
function whoAmI(): string {
  const uid = process.getuid?.();
  return uid === undefined ? "this user" : `uid ${uid}`;
}

/**
 * With an admin listener the management API writes the keys file (by
 * temp file and rename in its directory), the audit log and the
 * confirmation-code state next to it. Resolves with a message naming the uid
 * that needs write access when this process cannot do that, by really
 * trying: permissions, a read-only file system or mount, an existing audit
 * log owned by someone else. Resolves undefined when it can, when there is
 * no admin listener, or with `keys.store: redis` (nothing is written there
 * then: keys, audit log and code state live in Redis).
 */
export async function keysDirProblem(config: Config): Promise<string | undefined> {
  if (!config.admin || config.keys.store.kind === "redis") return undefined;
  const dir = dirname(config.keys.file);
  const fix = `give ${whoAmI()} write access to ${dir} (a writable volume or bind mount owned by it), or remove the admin section to run without the management API`;
  const probe = `${dir}/.keyfence-write-check.${process.pid}`;
  try {
    const fh = await open(probe, "wx", 0o600);
    await fh.close();
    await unlink(probe);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    return `the management API writes the keys file ${config.keys.displayName} and its audit log in ${dir}, but ${whoAmI()} cannot create files there (${code}): ${fix}`;
  }
  const audit = sideFiles(config.keys.file).audit;
  try {
    const fh = await open(audit, "r+");
    await fh.close();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    if (code === "ENOENT") return undefined;
    return `the management API appends to the audit log ${audit}, but ${whoAmI()} cannot (${code}): ${fix}`;
  }
  return undefined;
}
