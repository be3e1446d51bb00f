/**
 * The dashboard's notes and expiry (SPEC §9) in Debian's headless Chromium:
 * a note beside each entry, the time left, a framework-free date/time picker
 * in the browser's zone, at 360 px; and the audit sentences of an expiry.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { chromium, type Browser } from "playwright-core";
import type { AuditEvent } from "../../src/admin/audit.js";
import { eventSentences } from "../../src/admin/dashboard/pages.js";
import { needBinary } from "../helpers/binary.js";
import { bearer, send } from "../helpers/http.js";
import { startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const TOKEN = "dashboard-entries-operator";
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
const CHROMIUM = process.env["CHROMIUM_PATH"]
  ? needBinary("chromium", process.env["CHROMIUM_PATH"])
  : needBinary("chromium", "/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome");
const iso = (ms: number): string => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
const DAY = 86_400_000;

function read(e: AuditEvent): string {
  const { summary, details } = eventSentences(e);
  return [summary, ...details.map((d) => d.text.replace(/<[^>]*>/g, ""))].join(" | ").replace(/\s+/g, " ");
}

test("audit sentences: an expiry, and note and expiry changes", () => {
  const base: AuditEvent = {
    id: 1,
    time: "2026-11-30T07:00:00Z",
    action: "expire",
    actor: { type: "system", id: "keyfence" },
    client_ip: "",
    key_id: "k1",
    ip_allow_list: { before: ["10.0.0.1", "10.0.0.2"], after: ["10.0.0.2"] },
    changes: {},
    confirmed: false,
    expired: { entry: "10.0.0.1", note: "Jane", expires_at: "2026-11-30T07:00:00Z" },
  };
  assert.match(
    read(base),
    /^entry 10\.0\.0\.1 \(“Jane”\) expired \| its expires_at: .*2026-11-30 07:00 UTC.* \| in force now: 10\.0\.0\.2$/,
  );
  assert.match(
    read({ ...base, ip_allow_list: { before: ["10.0.0.1"], after: [] } }),
    /in force now: nothing \(the key admits no address/,
  );
  const update: AuditEvent = {
    ...base,
    action: "update",
    actor: { type: "operator", id: "ops" },
    client_ip: "127.0.0.1",
    expired: undefined,
    ip_allow_list: { before: ["10.0.0.1"], after: ["10.0.0.1"] },
    changes: {
      ip_allow_list_entries: {
        before: [{ entry: "10.0.0.1", note: null, expires_at: null }],
        after: [{ entry: "10.0.0.1", note: "Jane", expires_at: "2026-12-01T00:00:00Z" }],
      },
    },
  };
  assert.match(
    read(update),
    /note of 10\.0\.0\.1: none → “Jane” \| expiry of 10\.0\.0\.1: never → .*2026-12-01 00:00 UTC/,
  );
});

describe("dashboard: notes and expiry in a real browser", { skip: CHROMIUM.skip }, () => {
  let up: Upstream;
  let kf: TestSidecar;
  let browser: Browser;
  const soon = Date.now() + 3 * DAY + 3_600_000;
  const past = Date.now() - 2 * DAY;
  before(async () => {
    up = await startUpstream();
    const keys = [
      "keys:",
      "  - id: k_temp",
      "    name: Contractor key",
      `    secret_sha256: ${sha("s_temp")}`,
      "    ip_allow_list:",
      "      - 198.51.100.0/24",
      `      - {entry: 203.0.113.7, note: "Jane's laptop", expires_at: ${iso(soon)}}`,
      `      - {entry: "2001:db8:7::/48", note: Old office, expires_at: ${iso(past)}}`,
      "",
    ].join("\n");
    kf = await startTestSidecar({
      upstream: up.url,
      keys,
      admin: { operators: [{ name: "alice", token_sha256: sha(TOKEN) }] },
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM.path,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"],
    });
  });
  after(async () => {
    await browser.close();
    await kf.stop();
    await up.close();
  });

  test("notes beside entries, time left, a datetime-local picker in local time, at 360 px", async () => {
    const context = await browser.newContext({
      viewport: { width: 360, height: 740 },
      timezoneId: "America/New_York",
      locale: "en-US",
    });
    const page = await context.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => {
      if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text());
    });
    await page.goto(kf.adminUrl);
    await page.fill("#token", TOKEN);
    await page.click("button[type=submit]");
    await page.waitForSelector("#keys-table");
    assert.match(((await page.textContent("#keys-table")) ?? "").replace(/\s+/g, " "), /3 entries, 1 expired/);

    await page.goto(`${kf.adminUrl}/keys/k_temp`);
    await page.waitForSelector("#entry-details");
    const row = (entry: string) => page.locator(`#entry-details tr[data-entry="${entry}"]`);
    assert.equal(await row("203.0.113.7").locator("input.entry-note").inputValue(), "Jane's laptop");
    assert.match((await row("203.0.113.7").locator(".time-left").textContent()) ?? "", /^expires in 3 days$/);
    assert.match((await row("2001:db8:7::/48").locator(".time-left").textContent()) ?? "", /^expired 2 days ago$/);
    assert.match((await row("198.51.100.0/24").locator(".time-left").textContent()) ?? "", /no expiry/);
    // The picker is the browser's own, in local (New York) time.
    assert.equal(await row("203.0.113.7").locator("input.entry-expiry").getAttribute("type"), "datetime-local");
    const local = await row("203.0.113.7").locator("input.entry-expiry").inputValue();
    const ny = new Date(soon).toLocaleString("sv-SE", { timeZone: "America/New_York" }).replace(" ", "T");
    // Chromium drops zero seconds from the value it reads back (12:42:00 reads 12:42): one run in sixty.
    assert.equal(local.length === "YYYY-MM-DDTHH:MM".length ? `${local}:00` : local, ny);
    const width = await page.evaluate<number>("document.documentElement.scrollWidth");
    assert.ok(width <= 360, `the page is ${width}px wide at 360px`);

    // A note and an expiry for the plain entry: no confirmation needed (it tightens).
    await row("198.51.100.0/24").locator("input.entry-note").fill("Billing servers");
    await row("198.51.100.0/24").locator("input.entry-expiry").fill("2030-01-02T03:04:05");
    assert.match((await row("198.51.100.0/24").locator(".time-left").textContent()) ?? "", /^expires in \d+ years$/);
    await page.click("#save");
    await page.locator("#form-status", { hasText: "Saved." }).waitFor();
    const k = (await send(`${kf.adminUrl}/v1/api-keys/k_temp`, { headers: [bearer(TOKEN)] })).json() as {
      ip_allow_list_entries: { entry: string; note: string | null; expires_at: string | null }[];
    };
    assert.deepEqual(k.ip_allow_list_entries[0], {
      entry: "198.51.100.0/24",
      note: "Billing servers",
      expires_at: "2030-01-02T08:04:05Z",
    });
    assert.equal(k.ip_allow_list_entries[2]?.expires_at, iso(past), "the expired entry went back unchanged");

    // A new line gets its own row; a bad note is marked on its line with the server's message.
    const lines = await page.locator("#ip_allow_list").inputValue();
    await page.locator("#ip_allow_list").fill(`${lines.trimEnd()}\n192.0.2.1`);
    await row("192.0.2.1").locator("input.entry-note").fill("   ");
    await page.click("#save");
    await page.locator("#list-lines li", { hasText: /note: .*must not be blank/ }).waitFor();
    await row("192.0.2.1").locator("input.entry-note").fill("Build box");
    await page.click("#save");
    // Adding an entry changes the set: the session confirms it.
    await page.waitForSelector("#confirm-dialog[open]");
    await page.fill("#confirm-token", TOKEN);
    await page.click("#confirm-form button[type=submit]");
    await page.locator("#form-status", { hasText: "Saved." }).waitFor();
    const after = (await send(`${kf.adminUrl}/v1/api-keys/k_temp`, { headers: [bearer(TOKEN)] })).json() as {
      ip_allow_list_entries: { entry: string; note: string | null }[];
    };
    assert.deepEqual(after.ip_allow_list_entries.at(-1), { entry: "192.0.2.1", note: "Build box", expires_at: null });

    await page.goto(`${kf.adminUrl}/audit`);
    const audit = ((await page.textContent("#audit-list")) ?? "").replace(/\s+/g, " ");
    assert.match(audit, /note of 198\.51\.100\.0\/24: none → “Billing servers”/);
    assert.match(audit, /expiry of 198\.51\.100\.0\/24: never →/);
    const auditWidth = await page.evaluate<number>("document.documentElement.scrollWidth");
    assert.ok(auditWidth <= 360, `the audit page is ${auditWidth}px wide at 360px`);
    assert.deepEqual(errors, []);
    await context.close();
  });
});
