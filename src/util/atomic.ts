/** Atomic file replacement: readers see the old or the new content, never a part. */
import { randomBytes } from "node:crypto";
import { open, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/**
 * Writes `data` (a string as UTF-8, or parts written one after another) to `file` atomically: a temp file with a
 * random name (so writers in several processes never share one), fsync,
 * rename over, fsync the directory. A new file is owner-only; an existing
 * one keeps its mode.
 */
export async function writeFileAtomic(
  file: string,
  data: string | Uint8Array | readonly (string | Uint8Array)[],
): Promise<void> {
  const dir = dirname(file);
  const tmp = join(dir, `.${basename(file)}.${randomBytes(12).toString("hex")}.tmp`);
  let mode = 0o600;
  try {
    mode = (await stat(file)).mode & 0o777;
  } catch {
    // a new file: owner-only
  }
  const fh = await open(tmp, "wx", mode);
  try {
    if (typeof data === "string" || data instanceof Uint8Array) await fh.writeFile(data);
    else for (const part of data) await fh.writeFile(part); // each from where the last ended
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  const dh = await open(dir, "r");
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}
