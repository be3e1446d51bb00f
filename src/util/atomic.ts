/** Atomic file replacement: readers see the old or the new content, never a part. */
import { randomBytes } from "node:crypto";
import { open, rename, stat, unlink, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/** Most buffers per `writev` call (the usual IOV_MAX). */
const IOV_MAX = 1024;

/** Writes `parts` one after another from the file's start, a `writev` per {@link IOV_MAX} buffers, resuming a short write. */
async function writeParts(fh: FileHandle, parts: readonly (string | Uint8Array)[]): Promise<void> {
  const buffers = parts.map((p) => (typeof p === "string" ? Buffer.from(p) : p)).filter((b) => b.length > 0);
  let position = 0;
  for (let i = 0; i < buffers.length;) {
    const batch = buffers.slice(i, i + IOV_MAX);
    const { bytesWritten } = await fh.writev(batch, position);
    if (bytesWritten === 0) throw new Error(`writev wrote nothing at byte ${position}`);
    position += bytesWritten;
    // Skip what was written; a part written in part is resumed from where it stopped.
    let done = bytesWritten;
    while (i < buffers.length && done >= (buffers[i] as Uint8Array).length) done -= (buffers[i++] as Uint8Array).length;
    if (done > 0) buffers[i] = (buffers[i] as Uint8Array).subarray(done);
  }
}

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
    else await writeParts(fh, data);
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
