/**
 * The dashboard end to end in Debian's headless Chromium (playwright-core):
 * sign-in, line errors, confirmation, one-time secret, proxy use, expiry,
 * XSS, CSRF, sign-out. KEYFENCE_SCREENSHOTS=1 also writes docs/screenshots/.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import { needBinary } from "../helpers/binary.js";
import { code, testClock, wrongCode } from "../helpers/totp.js";
import { bearer, send, type Reply } from "../helpers/http.js";
import { startTestSidecar, type TestSidecar } from "../helpers/sidecar.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const ROOT = resolve(fileURLToPath(import.meta.url), "../../../..");
const SHOTS = process.env["KEYFENCE_SCREENSHOTS"] === "1" ? join(ROOT, "docs/screenshots") : undefined;
const TOTP = "KVKFKRCPNZQUYMLXOVYDSQKJKZDTSRLD";
const TOKEN = "dashboard-operator-token";
const BOB_TOTP = "ONSWG4TFORZWK3TTMVZXEZLUOM2Q====";
const BOB = "dashboard-operator-bob";
const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
// CHROMIUM_PATH when set (and then only it), else Debian's path, else whatever PATH offers.
const CHROMIUM = process.env["CHROMIUM_PATH"]
  ? needBinary("chromium", process.env["CHROMIUM_PATH"])
  : needBinary(
      "chromium",
      "/usr/bin/chromium",
      "chromium",
      "chromium-browser",
      "google-chrome",
      "google-chrome-stable",
    );

async function shot(page: Page, name: string): Promise<void> {
  if (SHOTS === undefined) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

describe("dashboard in a real browser", { skip: CHROMIUM.skip }, () => {
  // The sidecar's clock, for codes and sessions: it moves only when a test moves it.
  const clock = testClock();
  let up: Upstream;
  let kf: TestSidecar;
  let browser: Browser;
  before(async () => {
    up = await startUpstream();
    kf = await startTestSidecar({
      upstream: up.url,
      keys: [
        {
          id: "k_existing",
          secret: "s_existing",
          name: "Existing key",
          scopes: ["messages:send"],
          allow: ["203.0.113.0/24"],
        },
      ],
      admin: {
        operators: [
          { name: "alice", token_sha256: sha(TOKEN), totp_secret: TOTP },
          { name: "bob", token_sha256: sha(BOB), totp_secret: BOB_TOTP },
        ],
        confirm_window_s: 2,
      },
      now: clock.now,
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM.path,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
      ],
    });
  });
  after(async () => {
    await browser.close();
    await kf.stop();
    await up.close();
  });

  test("sign in, create with a bad line, fix it, confirm, see the secret once, use it, edit after expiry, sign out", async () => {
    // A time zone half an hour off UTC: local times cannot pass for UTC by accident.
    const context = await browser.newContext({
      viewport: { width: 1180, height: 900 },
      timezoneId: "Asia/Kolkata",
      locale: "en-GB",
    });
    const page = await context.newPage();
    const alerts: string[] = [];
    page.on("dialog", (d) => {
      alerts.push(d.message());
      void d.accept();
    });
    const pageErrors: string[] = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    page.on("console", (m) => {
      // API refusals (400, 403) are expected network errors; anything else (CSP violations, exceptions) is not.
      if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) pageErrors.push(m.text());
    });

    // Sign in with the keyboard alone.
    const signin = await page.goto(kf.adminUrl);
    assert.equal(signin?.status(), 200);
    const headers = signin?.headers() ?? {};
    assert.match(headers["content-security-policy"] ?? "", /script-src 'self'/);
    assert.doesNotMatch(headers["content-security-policy"] ?? "", /unsafe-inline/);
    assert.equal(headers["x-frame-options"], "DENY");
    assert.equal(headers["referrer-policy"], "same-origin");
    await shot(page, "signin");
    await page.locator("#token:focus").waitFor(); // autofocus: no mouse needed
    await page.keyboard.type(TOKEN);
    await page.keyboard.press("Tab");
    // The code of the previous step, kept: the confirmation below tries it again.
    const signInCode = code(TOTP, clock.now(), -1);
    await page.keyboard.type(signInCode);
    await Promise.all([page.waitForURL(`${kf.adminUrl}/`), page.keyboard.press("Enter")]);
    await page.waitForSelector("#keys-table");
    assert.ok((await page.textContent("#keys-table"))?.includes("Existing key"));
    assert.ok((await page.textContent("#keys-table"))?.includes("1 entry"));
    // A key from the keys file without times says where it came from instead of a dash.
    assert.match((await page.textContent("#keys-table tbody tr:has-text('Existing key')")) ?? "", /from file/);
    assert.doesNotMatch((await page.textContent("#keys-table")) ?? "", /—/);
    const [cookie] = await context.cookies();
    assert.equal(cookie?.name, "kf_session");
    assert.equal(cookie?.httpOnly, true);
    assert.equal(cookie?.sameSite, "Strict");

    // Create a key whose list has one bad line: the server's message shows on that line.
    await page.click("text=New key >> nth=0");
    await page.waitForSelector("#key-form");
    assert.equal(await page.textContent("#current-ip"), "127.0.0.1");
    await page.fill("#name", "Billing");
    await page.fill("#scopes", "invoices:read");
    await page.fill("#ip_allow_list", "2001:DB8:0::/32\n300.1.2.3\n");
    await page.click("#add-my-ip");
    assert.equal(await page.inputValue("#ip_allow_list"), "2001:DB8:0::/32\n300.1.2.3\n127.0.0.1");
    await page.click("#save");
    const bad = page.locator('#list-lines li.invalid[data-line="2"]');
    await bad.waitFor();
    assert.match((await bad.textContent()) ?? "", /300\.1\.2\.3.*part "300" is greater than 255/);
    assert.equal(await page.locator("#list-lines li.invalid").count(), 1, "only the bad line is marked");
    assert.equal(await page.locator("#list-lines li").count(), 1, "valid lines are not echoed");
    assert.equal(await page.getAttribute("#ip_allow_list", "aria-invalid"), "true");
    await shot(page, "line-error");

    // Fix it; saving a list needs the confirmation dialog (token + code).
    await page.fill("#ip_allow_list", "2001:DB8:0::/32\n::ffff:198.51.100.0/120\n127.0.0.1");
    await page.click("#save");
    await page.waitForSelector("#confirm-dialog[open]");
    await shot(page, "confirm");
    // The code just used to sign in: the dialog says it was used and to wait for the next one.
    const confirmError = async (token: string, totpCode: string): Promise<string> => {
      await page.evaluate('document.getElementById("confirm-error").textContent = ""');
      await page.fill("#confirm-token", token);
      await page.fill("#confirm-code", totpCode);
      await page.click("#confirm-form button[type=submit]");
      await page.locator("#confirm-error", { hasText: /\S/ }).waitFor();
      return (await page.textContent("#confirm-error")) ?? "";
    };
    // (On a machine so slow that the sign-in code left the ±1 step window, it is merely invalid.)
    assert.match(await confirmError(TOKEN, signInCode), /already used.*wait for the next code/i);
    // A wrong token learns nothing about the code.
    assert.match(await confirmError("wrong-token", signInCode), /^invalid token or code$/);
    assert.match(await confirmError("wrong-token", code(TOTP, clock.now())), /^invalid token or code$/);
    assert.match(await confirmError(TOKEN, wrongCode(TOTP, clock.now())), /^invalid token or code$/);
    await page.fill("#confirm-token", TOKEN);
    await page.fill("#confirm-code", code(TOTP, clock.now()));
    await page.click("#confirm-form button[type=submit]");
    await page.waitForSelector("#secret-panel:not([hidden])");
    const secret = (await page.textContent("#secret-value")) ?? "";
    assert.match(secret, /^kf_[A-Za-z0-9_-]{43}$/);
    assert.match((await page.textContent("#secret-panel")) ?? "", /will not be shown again/);
    await shot(page, "secret");

    // The secret works from the allowed address and not from another.
    assert.equal((await send(`${kf.url}/_keyfence/ping`, { headers: [bearer(secret)] })).status, 200);
    const denied = await send(`${kf.url}/_keyfence/ping`, { headers: [bearer(secret)], localAddress: "127.0.0.2" });
    assert.equal(denied.status, 403);
    assert.equal(denied.body, '{"message":"source IP 127.0.0.2 is not allowed for this API key"}');

    // The edit page shows the canonical list, and the secret is gone for good.
    await page.click("#secret-key-link");
    await page.waitForSelector("#key-form[data-id]");
    assert.equal(await page.inputValue("#ip_allow_list"), "2001:db8::/32\n198.51.100.0/24\n127.0.0.1");
    assert.ok(!(await page.content()).includes(secret), "the secret is never shown again");
    // Observed sources (the two pings above) can be added to the list with one click.
    assert.match((await page.textContent("#sources-table")) ?? "", /127\.0\.0\.0\/24\s*2\s*1/);
    await page.click('button.add-source[data-network="127.0.0.0/24"]');
    assert.equal(await page.inputValue("#ip_allow_list"), "2001:db8::/32\n198.51.100.0/24\n127.0.0.1\n127.0.0.0/24");
    await page.fill("#ip_allow_list", "2001:db8::/32\n198.51.100.0/24\n127.0.0.1");
    await shot(page, "edit");

    // After the confirmation window (2 s here, passed on the sidecar's clock) a list change asks again; a
    // rename does not.
    clock.advance(2001);
    await page.fill("#name", "Billing (renamed)");
    await page.click("#save");
    const saved = page.locator("#form-status", { hasText: "Saved." });
    await saved.waitFor();
    assert.equal(await saved.getAttribute("role"), "status", "success is a status, not an alert");
    assert.equal(await saved.getAttribute("class"), "success");
    assert.equal(await page.textContent("#form-error"), "", "nothing in the error slot");
    assert.equal(
      await page.evaluate<string>('getComputedStyle(document.getElementById("form-status")).color'),
      "rgb(26, 127, 55)",
      "success green, not the error red",
    );
    assert.equal(await page.locator("#confirm-dialog[open]").count(), 0, "renaming needs no confirmation");
    await page.fill("#ip_allow_list", "127.0.0.1\n10.0.0.0/8");
    await page.click("#save");
    await page.waitForSelector("#confirm-dialog[open]");
    await page.fill("#confirm-token", TOKEN);
    await page.fill("#confirm-code", code(TOTP, clock.now(), 1));
    await page.click("#confirm-form button[type=submit]");
    await page.locator("#form-status", { hasText: "Saved." }).waitFor();
    assert.equal(await page.inputValue("#ip_allow_list"), "127.0.0.1\n10.0.0.0/8");
    const list = (
      await send(`${kf.adminUrl}/v1/audit?limit=1`, { headers: [["Cookie", `kf_session=${cookie?.value ?? ""}`]] })
    ).json() as {
      data: Array<{ actor: { via: string }; ip_allow_list: { after: string[] } }>;
    };
    assert.equal(list.data[0]?.actor.via, "session");
    assert.deepEqual(list.data[0]?.ip_allow_list.after, ["127.0.0.1", "10.0.0.0/8"]);

    // The audit page says who changed what, in sentences naming the key.
    await page.click("text=Audit log");
    await page.waitForSelector("#audit-list");
    const events = (await page.locator("#audit-list > li").allTextContents()).map((t) => t.replace(/\s+/g, " "));
    const [listChange, rename, created] = events;
    assert.match(
      listChange ?? "",
      /Billing \(renamed\) key_\w+ updated ip_allow_list: added 10\.0\.0\.0\/8, removed 2001:db8::\/32, 198\.51\.100\.0\/24 by operator alice \(dashboard\) confirmed from 127\.0\.0\.1/,
    );
    assert.match(
      rename ?? "",
      /Billing \(renamed\) key_\w+ updated renamed from “Billing” to “Billing \(renamed\)” by operator alice/,
    );
    assert.match(
      created ?? "",
      /Billing key_\w+ created with scopes invoices:read ip_allow_list: 2001:db8::\/32, 198\.51\.100\.0\/24, 127\.0\.0\.1 by operator alice \(dashboard\) confirmed/,
    );
    for (const e of events) assert.doesNotMatch(e, /null|\["|"\]/, "no JSON in the sentences");
    // Times: local (UTC+5:30 here) with their age; the exact value on hover.
    const time = page.locator("#audit-list time").first();
    const iso = (await time.getAttribute("datetime")) ?? "";
    const local = new Date(Date.parse(iso) + 330 * 60_000).toISOString().slice(11, 16);
    const shown = (await time.textContent()) ?? "";
    assert.ok(shown.includes(local), `${shown} shows the local time ${local}`);
    assert.match(shown, /\((just now|\d+ seconds? ago|1 minute ago)\)$/);
    assert.doesNotMatch(shown, /UTC|T\d\d:/);
    assert.ok((await time.getAttribute("title"))?.includes(iso), "the exact UTC time on hover");
    await shot(page, "audit");

    // Sign out: the session is dead everywhere.
    await page.click("header form button[type=submit]");
    await page.waitForSelector("#token");
    const old = await send(`${kf.adminUrl}/v1/api-keys`, {
      headers: [["Cookie", `kf_session=${cookie?.value ?? ""}`]],
    });
    assert.equal(old.status, 401);
    assert.deepEqual(alerts, []);
    assert.deepEqual(pageErrors, []);
    await context.close();
  });

  test("a key name with markup renders as text; 360 px wide works; cross-origin and CSRF-less changes are refused", async () => {
    const evil = "<img src=x onerror=alert(1)>";
    // Created through the API with the operator token (the operator has TOTP, but no list means no code).
    const created = await send(`${kf.adminUrl}/v1/api-keys`, {
      method: "POST",
      headers: [bearer(TOKEN), ["Content-Type", "application/json"]],
      body: JSON.stringify({ name: evil, scopes: ["x:y"] }),
    });
    assert.equal(created.status, 201);
    const context = await browser.newContext({ viewport: { width: 360, height: 740 } });
    const page = await context.newPage();
    const alerts: string[] = [];
    page.on("dialog", (d) => {
      alerts.push(d.message());
      void d.dismiss();
    });
    await page.goto(kf.adminUrl);
    await page.fill("#token", BOB);
    await page.fill("#code", code(BOB_TOTP, clock.now()));
    await page.click("button[type=submit]");
    await page.waitForSelector("#keys-table");
    assert.ok(((await page.textContent("#keys-table")) ?? "").includes(evil), "the name is shown as text");
    assert.equal(await page.locator("#keys-table img").count(), 0, "no element was injected");
    assert.deepEqual(alerts, []);
    await shot(page, "keys-mobile");

    // Every page fits phone widths without sideways scrolling, under a compact header; long
    // unbroken names, ids, IPv6 entries and audit lines wrap.
    const long = await send(`${kf.adminUrl}/v1/api-keys`, {
      method: "POST",
      headers: [bearer(TOKEN), ["Content-Type", "application/json"]],
      body: JSON.stringify({ name: "N".repeat(200), scopes: ["a".repeat(100), "messages:send"] }),
    });
    assert.equal(long.status, 201);
    const longId = (long.json() as { id: string }).id;
    const renamed = await send(`${kf.adminUrl}/v1/api-keys/${longId}`, {
      method: "PATCH",
      headers: [bearer(TOKEN), ["Content-Type", "application/json"]],
      body: JSON.stringify({ name: "M".repeat(200), scopes: ["b".repeat(100)] }),
    });
    assert.equal(renamed.status, 200);
    for (const width of [360, 390]) {
      await page.setViewportSize({ width, height: 740 });
      for (const path of ["/", "/keys/new", "/keys/k_existing", `/keys/${longId}`, "/audit"]) {
        await page.goto(`${kf.adminUrl}${path}`);
        await page.waitForSelector("main");
        const scrollWidth = await page.evaluate<number>("document.documentElement.scrollWidth");
        assert.ok(scrollWidth <= width, `${path} is ${scrollWidth}px wide at ${width}px`);
        const header = await page.locator("header.top").boundingBox();
        assert.ok(
          header !== null && header.height <= 90,
          `${path}: the header is ${header?.height}px tall at ${width}px`,
        );
      }
    }

    const [cookie] = await context.cookies();
    const csrf = await page.evaluate<string>('JSON.parse(document.getElementById("kf-data").textContent).csrf');
    const asSession = (extra: Array<[string, string]>) =>
      send(`${kf.adminUrl}/v1/api-keys`, {
        method: "POST",
        headers: [["Cookie", `kf_session=${cookie?.value ?? ""}`], ["Content-Type", "application/json"], ...extra],
        body: JSON.stringify({ name: "csrf" }),
      });
    const crossOrigin = await asSession([
      ["X-CSRF-Token", csrf],
      ["Origin", "http://evil.example"],
    ]);
    assert.equal(crossOrigin.status, 403);
    assert.equal(crossOrigin.headers["x-keyfence-reason"], "csrf_failed");
    const noToken = await asSession([["Origin", kf.adminUrl]]);
    assert.equal(noToken.status, 403);
    const ok = await asSession([
      ["X-CSRF-Token", csrf],
      ["Origin", kf.adminUrl],
    ]);
    assert.equal(ok.status, 201, "same origin with the token works");
    const cssHref = await page.getAttribute("link[rel=stylesheet]", "href");
    assert.match(cssHref ?? "", /^\/assets\/app\.[0-9a-f]{12}\.css$/);
    const css = await send(`${kf.adminUrl}${cssHref ?? ""}`);
    assert.match(String(css.headers["cache-control"]), /immutable/);
    await context.close();
  });

  test("saving a rename keeps what another operator changed meanwhile: only the edited fields are sent", async () => {
    const api = (method: string, path: string, body: unknown, otp?: string): Promise<Reply> =>
      send(`${kf.adminUrl}${path}`, {
        method,
        headers: [
          bearer(BOB),
          ["Content-Type", "application/json"],
          ...(otp === undefined ? [] : ([["X-Keyfence-OTP", otp]] as Array<[string, string]>)),
        ],
        body: JSON.stringify(body),
      });
    clock.advance(60_000);
    const made = await api(
      "POST",
      "/v1/api-keys",
      { name: "Shared", ip_allow_list: ["198.51.100.1", "198.51.100.2"] },
      code(BOB_TOTP, clock.now()),
    );
    assert.equal(made.status, 201, made.body);
    const id = (made.json() as { id: string }).id;
    // Alice signs in and opens the key as it is now.
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(kf.adminUrl);
    await page.fill("#token", TOKEN);
    await page.fill("#code", code(TOTP, clock.now()));
    await Promise.all([page.waitForURL(`${kf.adminUrl}/`), page.click("button[type=submit]")]);
    await page.goto(`${kf.adminUrl}/keys/${id}`);
    await page.waitForSelector("#name");
    // Meanwhile Bob removes an entry and adds a scope.
    clock.advance(30_000);
    const narrowed = await api(
      "PATCH",
      `/v1/api-keys/${id}`,
      { ip_allow_list: ["198.51.100.1"], scopes: ["reports:read"] },
      code(BOB_TOTP, clock.now()),
    );
    assert.equal(narrowed.status, 200, narrowed.body);
    // Alice renames the key and saves: no confirmation needed, and Bob's changes stay.
    await page.fill("#name", "Shared (renamed)");
    await page.click("#save");
    await page.locator("#form-status", { hasText: "Saved." }).waitFor();
    const now = (await send(`${kf.adminUrl}/v1/api-keys/${id}`, { headers: [bearer(BOB)] })).json() as {
      name: string;
      scopes: string[];
      ip_allow_list: string[];
    };
    assert.equal(now.name, "Shared (renamed)");
    assert.deepEqual(now.ip_allow_list, ["198.51.100.1"], "the removed entry stays removed");
    assert.deepEqual(now.scopes, ["reports:read"]);
    await context.close();
  });

  test("failed sign-ins share the management API's throttle", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(kf.adminUrl);
    let throttled = false;
    for (let i = 0; i < 12 && !throttled; i++) {
      await page.fill("#token", `wrong-${i}`);
      await page.click("button[type=submit]");
      await page.waitForSelector("#signin-error");
      const text = (await page.textContent("#signin-error")) ?? "";
      throttled = /Too many failed attempts/.test(text);
      if (!throttled) assert.match(text, /Invalid token or code/);
    }
    assert.ok(throttled, "sign-in is throttled after repeated failures");
    const api = await send(`${kf.adminUrl}/v1/api-keys`, { headers: [bearer(TOKEN)] });
    assert.equal(api.status, 429, "the same client IP is throttled on the API too");
    await context.close();
  });
});
