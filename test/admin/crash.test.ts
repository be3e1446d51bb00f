/** A kill -9 in the middle of a stream of API writes leaves a valid keys file holding every answered change. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { parseKeysFile } from "../../src/store/keysfile.js";
import { bearer, send } from "../helpers/http.js";
import { keysYaml } from "../helpers/sidecar.js";

const BIN = resolve(fileURLToPath(import.meta.url), "../../../src/cli/main.js");

test("kill -9 during a stream of writes: the file is old or new, never torn; answered writes are there", async () => {
  const dir = mkdtempSync(join(tmpdir(), "keyfence-crash-"));
  try {
    writeFileSync(join(dir, "keys.yaml"), keysYaml([{ id: "k0", secret: "s0", allow: ["127.0.0.1"] }]));
    const token = createHash("sha256").update("tok").digest("hex");
    writeFileSync(
      join(dir, "keyfence.yaml"),
      `listen: "127.0.0.1:0"\nupstream: "http://127.0.0.1:9"\nkeys:\n  file: keys.yaml\nadmin:\n  listen: "127.0.0.1:0"\n  operators:\n    - name: ops\n      token_sha256: "${token}"\n`,
    );
    const child = spawn(process.execPath, [BIN, "serve", "--config", join(dir, "keyfence.yaml")], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    const port = await new Promise<number>((res, rej) => {
      const t = setTimeout(() => rej(new Error(`no start: ${out}`)), 10_000);
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        const m = /"admin":"127\.0\.0\.1:(\d+)"/.exec(out);
        if (m) {
          clearTimeout(t);
          res(Number(m[1]));
        }
      });
    });
    const answered: string[] = [];
    let stop = false;
    const writer = async (w: number): Promise<void> => {
      for (let i = 0; !stop; i++) {
        try {
          const r = await send(`http://127.0.0.1:${port}/v1/api-keys`, {
            method: "POST",
            headers: [bearer("tok"), ["Content-Type", "application/json"]],
            body: JSON.stringify({ name: `w${w}-${i}`, ip_allow_list: [`10.${w}.${i % 256}.0/24`] }),
            timeoutMs: 2000,
          });
          if (r.status === 201) answered.push((r.json() as { id: string }).id);
        } catch {
          return; // the process is gone
        }
      }
    };
    const writers = [0, 1, 2, 3].map(writer);
    await new Promise((r) => setTimeout(r, 400));
    child.kill("SIGKILL");
    await new Promise((r) => child.on("exit", r));
    stop = true;
    await Promise.all(writers);
    assert.ok(answered.length > 5, `only ${answered.length} writes answered before the kill`);
    const parsed = parseKeysFile("keys.yaml", readFileSync(join(dir, "keys.yaml"), "utf8"), 1000);
    assert.ok(parsed.ok, "the keys file is valid after kill -9");
    const ids = new Set(parsed.keys.map((k) => k.id));
    for (const id of answered) assert.ok(ids.has(id), `answered write ${id} is missing`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
