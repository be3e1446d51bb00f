/**
 * Finds the real peer binaries the integration tests run (redis-server,
 * haproxy, nginx, caddy, chromium, buildah, podman). A missing one fails the
 * test under CI=true and, elsewhere, skips it with one line naming the
 * Debian package to install.
 */
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";

/** The absolute path of `command` on PATH (or itself when it is a path that exists), else undefined. */
export function findBinary(command: string): string | undefined {
  const candidates = command.includes("/")
    ? [command]
    : (process.env["PATH"] ?? "").split(delimiter).map((dir) => join(dir, command));
  for (const path of candidates) {
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** What a test file needs to know about one peer binary. */
export interface Needed {
  /** The binary's path, or undefined when the tests must skip. */
  readonly path: string | undefined;
  /** The `skip` option for `describe`/`test`: false when present, else the line that says what to install. */
  readonly skip: string | false;
}

/**
 * Looks for the first of `commands` that exists. Missing under CI=true: throws
 * (the suite fails, naming the package); elsewhere returns a skip reason.
 */
export function needBinary(pkg: string, ...commands: string[]): Needed {
  for (const c of commands) {
    const path = findBinary(c);
    if (path !== undefined) return { path, skip: false };
  }
  const line = `${commands[0] ?? pkg} not found: install the Debian package ${pkg} (apt-get install ${pkg})`;
  if (process.env["CI"] === "true") throw new Error(line);
  process.stdout.write(`# skipped: ${line}\n`);
  return { path: undefined, skip: line };
}
