/**
 * A lock on a file shared by processes (proper-lockfile): an atomic mkdir of
 * `.NAME.lock` beside it, whose mtime the holder refreshes, so a lock left by
 * a killed process goes stale and is taken over.
 */
import { basename, dirname, join } from "node:path";
import { lock } from "proper-lockfile";

/** A lock older than this (its holder stopped refreshing it) is taken over. */
export const LOCK_STALE_MS = 10_000;

/**
 * Takes the lock on `file` (which need not exist), waiting up to ~30 s for
 * it; resolves to its release. `compromised` hears of a lock lost while held
 * (its directory removed or taken over).
 */
export function lockBeside(file: string, compromised: (err: Error) => void): Promise<() => Promise<void>> {
  return lock(file, {
    realpath: false,
    lockfilePath: join(dirname(file), `.${basename(file)}.lock`),
    stale: LOCK_STALE_MS,
    update: LOCK_STALE_MS / 4,
    retries: { retries: 300, minTimeout: 5, maxTimeout: 100, factor: 1.5, randomize: true },
    onCompromised: compromised,
  });
}

/**
 * Runs `task` holding the lock on `file` ({@link lockBeside}) and releases it
 * after; `task` calls its argument right before each write, which throws once
 * the lock was lost (another process may hold it by then).
 */
export async function withLockBeside<T>(file: string, task: (stillHeld: () => void) => Promise<T>): Promise<T> {
  let lost: Error | undefined;
  const release = await lockBeside(file, (err) => (lost = err));
  try {
    return await task(() => {
      if (lost !== undefined) throw lost;
    });
  } finally {
    await release().catch(() => undefined);
  }
}
