/** The dashboard's server-rendered pages. Every value passes through the escaping `html` template. */
import type { AuditEvent } from "../audit.js";
import type { KeyView } from "../keys.js";
import type { ObservedSource } from "../../metrics/sources.js";
import { html, jsonBlock, type SafeHtml } from "./html.js";

/** Hashed asset URLs. */
export interface Assets {
  readonly js: string;
  readonly css: string;
}

/** What every signed-in page knows. */
export interface PageContext {
  readonly assets: Assets;
  readonly operator: string;
  readonly csrf: string;
  readonly clientIp: string;
  readonly totp: boolean;
}

function head(title: string, assets: Assets, script: boolean): SafeHtml {
  return html`<head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <title>${title} · keyfence</title>
    <link rel="stylesheet" href="${assets.css}" />
    ${script ? html`<script type="module" src="${assets.js}"></script>` : ""}
  </head>`;
}

function layout(ctx: PageContext, title: string, body: SafeHtml, data: Record<string, unknown> = {}): SafeHtml {
  return html`<!doctype html>
    <html lang="en">
      ${head(title, ctx.assets, true)}
      <body>
        <header class="top">
          <a class="brand" href="/">keyfence</a>
          <nav aria-label="Main">
            <a href="/">API keys</a><a href="/keys/new">New key</a><a href="/audit">Audit log</a>
          </nav>
          <span class="who"><span class="wide-only">Signed in as </span><strong>${ctx.operator}</strong></span>
          <form method="post" action="/session/end">
            <input type="hidden" name="csrf" value="${ctx.csrf}" /><button type="submit">Sign out</button>
          </form>
        </header>
        <main id="main">${body}</main>
        ${confirmDialog(ctx)}
        <script type="application/json" id="kf-data">
          ${jsonBlock({ csrf: ctx.csrf, clientIp: ctx.clientIp, totp: ctx.totp, ...data })}
        </script>
      </body>
    </html>`;
}

function confirmDialog(ctx: PageContext): SafeHtml {
  return html`<dialog id="confirm-dialog" aria-labelledby="confirm-title">
    <form id="confirm-form" method="dialog">
      <h2 id="confirm-title">Confirm it is you</h2>
      <p class="help">
        Changing an IP allow list needs your operator token
        again${ctx.totp ? " and a current code from your authenticator" : ""}. It stays confirmed for a few minutes.
      </p>
      <div class="field">
        <label for="confirm-token">Operator token</label
        ><input type="password" id="confirm-token" autocomplete="current-password" required />
      </div>
      ${ctx.totp ? html`<div class="field"><label for="confirm-code">Authenticator code</label><input type="text" id="confirm-code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required /></div>` : ""}
      <p class="error" id="confirm-error" role="alert"></p>
      <div class="actions">
        <button type="submit" class="primary" value="confirm">Confirm</button
        ><button type="button" id="confirm-cancel">Cancel</button>
      </div>
    </form>
  </dialog>`;
}

/** The sign-in page (no session). */
export function signInPage(assets: Assets, error?: string): SafeHtml {
  return html`<!doctype html>
    <html lang="en">
      ${head("Sign in", assets, false)}
      <body>
        <main class="signin">
          <h1>keyfence</h1>
          <p class="help">Sign in with your operator token to manage API keys and their IP allow lists.</p>
          ${error ? html`<p class="error" role="alert" id="signin-error">${error}</p>` : ""}
          <form method="post" action="/session">
            <div class="field">
              <label for="token">Operator token</label
              ><input type="password" id="token" name="token" autocomplete="current-password" required autofocus />
            </div>
            <div class="field">
              <label for="code">Authenticator code <span class="help">(if your operator has one)</span></label
              ><input
                type="text"
                id="code"
                name="code"
                inputmode="numeric"
                autocomplete="one-time-code"
                pattern="[0-9]{6}"
                maxlength="6"
              />
            </div>
            <button type="submit" class="primary">Sign in</button>
          </form>
        </main>
      </body>
    </html>`;
}

/**
 * A point in time: UTC in the markup (readable without the script), which the
 * script turns into local time and age ("3 minutes ago"), the exact value on hover.
 */
export function timeHtml(iso: string): SafeHtml {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return html`${iso}`;
  const text = `${d.toISOString().slice(0, 16).replace("T", " ")} UTC`;
  return html`<time datetime="${d.toISOString()}" title="${iso}">${text}</time>`;
}

/** A key's last change: its time, or "from file" for a key the keys file holds without times. */
function lastChange(k: KeyView): SafeHtml {
  const at = k.updated_at ?? k.created_at;
  return at === null
    ? html`<span class="help" title="loaded from the keys file, which records no time for this key">from file</span>`
    : timeHtml(at);
}

function listSummary(k: KeyView, now: number): SafeHtml {
  const n = k.ip_allow_list.length;
  if (n === 0) return html`<span class="unrestricted">unrestricted</span>`;
  const expired = k.ip_allow_list_entries.filter(
    (e) => e.expires_at !== null && Date.parse(e.expires_at) <= now,
  ).length;
  const count = `${n} ${n === 1 ? "entry" : "entries"}`;
  return expired === 0 ? html`${count}` : html`${count}, <span class="expired">${expired} expired</span>`;
}

/**
 * An entry's time left: "expires" or "expired" and a time the script shows as
 * local time and age ("in 3 days", "2 hours ago").
 */
function timeLeft(expiresAt: string | null, now: number): SafeHtml {
  if (expiresAt === null) return html`<span class="time-left help">no expiry</span>`;
  const gone = Date.parse(expiresAt) <= now;
  return html`<span class="time-left${gone ? " expired" : ""}"
    >${gone ? "expired" : "expires"} ${timeHtml(expiresAt)}</span
  >`;
}

/** The notes and expiries of a key's entries, one row per entry, with a date/time picker (no framework). */
function entryDetailsTable(key: KeyView | undefined, now: number): SafeHtml {
  const rows = key?.ip_allow_list_entries ?? [];
  return html`<h3 class="sub" id="details-title">Notes and expiry</h3>
    <p class="help" id="details-help">
      A note says whose entry it is; an entry with an expiry stops matching at that moment (your local time). Expired
      entries stay listed, and match nothing, until you remove them.
    </p>
    <table class="responsive" id="entry-details" aria-labelledby="details-title" aria-describedby="details-help">
      <thead>
        <tr>
          <th>Entry</th>
          <th>Note</th>
          <th>Expires</th>
        </tr>
      </thead>
      <tbody>
        ${rows.map(
          (e) =>
            html`<tr data-entry="${e.entry}">
              <td data-label="Entry"><code>${e.entry}</code></td>
              <td data-label="Note">
                <input
                  type="text"
                  class="entry-note"
                  maxlength="200"
                  aria-label="Note for ${e.entry}"
                  value="${e.note ?? ""}"
                />
              </td>
              <td data-label="Expires">
                <div class="expiry">
                  <input
                    type="datetime-local"
                    class="entry-expiry"
                    step="1"
                    aria-label="Expiry of ${e.entry}"
                    data-expires-at="${e.expires_at ?? ""}"
                  />
                  ${timeLeft(e.expires_at, now)}
                </div>
              </td>
            </tr>`,
        )}
      </tbody>
    </table>`;
}

/** The keys page: filter, table, paging. */
export function keysPage(
  ctx: PageContext,
  keys: readonly KeyView[],
  view: { q: string; page: number; pages: number; total: number; globalMode: string },
): SafeHtml {
  const link = (page: number): string =>
    `/?${new URLSearchParams({ ...(view.q ? { q: view.q } : {}), page: String(page) }).toString()}`;
  const body = html`<h1>API keys</h1>
    <div class="toolbar">
      <form method="get" action="/" role="search">
        <div>
          <label for="q">Filter by name, id or scope</label><input type="search" id="q" name="q" value="${view.q}" />
        </div>
        <button type="submit">Filter</button>
      </form>
      <a href="/keys/new">New key</a>
    </div>
    <p class="help">
      ${view.total} ${view.total === 1 ? "key" : "keys"}${view.q ? html` matching “${view.q}”` : ""}. Keys without an
      allow list work from any IP.
    </p>
    <table class="responsive" id="keys-table">
      <thead>
        <tr>
          <th>Name</th>
          <th>ID</th>
          <th>Scopes</th>
          <th>Mode</th>
          <th>IP allow list</th>
          <th>Last change</th>
        </tr>
      </thead>
      <tbody>
        ${keys.map(
          (k) =>
            html`<tr>
              <td data-label="Name">
                <a href="/keys/${encodeURIComponent(k.id)}">${k.name}</a>${
                  k.sandbox
                    ? html` <span class="tag" title="Allowed requests go to sandbox_upstream">sandbox</span>`
                    : ""
                }
              </td>
              <td data-label="ID"><code>${k.id}</code></td>
              <td data-label="Scopes">${k.scopes.map((s) => html`<span class="tag">${s}</span>`)}</td>
              <td data-label="Mode">${k.mode ?? html`<span class="help">${view.globalMode} (global)</span>`}</td>
              <td data-label="IP allow list">${listSummary(k, Date.now())}</td>
              <td data-label="Last change">${lastChange(k)}</td>
            </tr>`,
        )}
      </tbody>
    </table>
    ${view.pages > 1 ? html`<nav class="pager" aria-label="Pages">${view.page > 1 ? html`<a href="${link(view.page - 1)}">← Previous</a>` : ""}<span>Page ${view.page} of ${view.pages}</span>${view.page < view.pages ? html`<a href="${link(view.page + 1)}">Next →</a>` : ""}</nav>` : ""}`;
  return layout(ctx, "API keys", body);
}

/** The create or edit form with its IP Allow List section. */
export function keyFormPage(ctx: PageContext, key: KeyView | undefined, sources: readonly ObservedSource[]): SafeHtml {
  const editing = key !== undefined;
  const body = html`<h1>${editing ? html`Edit key <code>${key.id}</code>` : "New API key"}</h1>
    <form id="key-form" novalidate data-id="${key?.id ?? ""}">
      <div class="field">
        <label for="name">Name</label
        ><input type="text" id="name" name="name" required maxlength="200" value="${key?.name ?? ""}" />
      </div>
      <div class="field">
        <label for="scopes">Scopes</label
        ><input
          type="text"
          id="scopes"
          name="scopes"
          value="${key?.scopes.join(" ") ?? ""}"
          aria-describedby="scopes-help"
          autocapitalize="off"
          spellcheck="false"
        />
        <p class="help" id="scopes-help">Separated by spaces, e.g. <code>messages:send api_keys:write</code>.</p>
      </div>
      <div class="field">
        <label for="mode">Mode</label
        ><select id="mode" name="mode">
          <option value="" ${key?.mode == null ? " selected" : ""}>Follow the global mode</option>
          <option value="enforce" ${key?.mode === "enforce" ? " selected" : ""}>
            Enforce: refuse requests from other IPs
          </option>
          <option value="report" ${key?.mode === "report" ? " selected" : ""}>
            Report only: log and count, forward anyway
          </option>
        </select>
      </div>
      <div class="field">
        <label
          ><input
            type="checkbox"
            id="sandbox"
            name="sandbox"
            aria-describedby="sandbox-help"
            ${key?.sandbox === true ? " checked" : ""}
          />
          Sandbox key</label
        >
        <p class="help" id="sandbox-help">
          Its allowed requests go to <code>sandbox_upstream</code> (when configured) instead of the real upstream.
        </p>
      </div>
      ${allowListFieldset(ctx, key)}
      <p class="error" id="form-error" role="alert"></p>
      <p class="success" id="form-status" role="status"></p>
      <div class="actions">
        <button type="submit" class="primary" id="save">${editing ? "Save changes" : "Create key"}</button>
        ${editing ? html`<button type="button" class="danger" id="delete-key">Delete key</button>` : ""}
      </div>
    </form>
    ${SECRET_PANEL} ${editing ? sourcesSection(sources) : ""}`;
  return layout(ctx, editing ? `Edit ${key.name}` : "New API key", body, { key: key ?? null });
}

function joined(items: readonly string[]): string {
  return items.join(", ");
}

/** What changed in a list (scopes, allow-list entries), as "added x, removed y". */
function listChange(before: readonly string[], after: readonly string[]): SafeHtml {
  const b = new Set(before);
  const a = new Set(after);
  const added = after.filter((x) => !b.has(x));
  const removed = before.filter((x) => !a.has(x));
  const parts: SafeHtml[] = [];
  if (added.length > 0) parts.push(html`<span class="add">added <span class="mono">${joined(added)}</span></span>`);
  if (removed.length > 0)
    parts.push(html`<span class="remove">removed <span class="mono">${joined(removed)}</span></span>`);
  return parts.length === 0 ? html`no change` : html`${parts.map((p, i) => (i === 0 ? p : html`, ${p}`))}`;
}

const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : []);
const modeText = (v: unknown): string => (typeof v === "string" ? v : "the global mode");

/** One audit event as sentences: what happened to the key, then one line per changed field. */
export function eventSentences(e: AuditEvent): { summary: string; details: SafeHtml[] } {
  const c = e.changes;
  const listBefore = e.ip_allow_list.before ?? [];
  const listAfter = e.ip_allow_list.after ?? [];
  const details: SafeHtml[] = [];
  if (e.action === "import") {
    const ids = e.import?.key_ids ?? [];
    return {
      summary: `imported from ${e.import?.from ?? "a keys file"}: ${ids.length} ${ids.length === 1 ? "key" : "keys"} written`,
      details: ids.length === 0 ? [] : [html`keys: <span class="mono">${joined(ids)}</span>`],
    };
  }
  if (e.action === "create") {
    const scopes = strings(c["scopes"]?.after);
    const mode = c["mode"]?.after;
    const summary = `created with ${scopes.length === 0 ? "no scopes" : `scopes ${joined(scopes)}`}${typeof mode === "string" ? `, mode ${mode}` : ""}`;
    details.push(
      listAfter.length === 0
        ? html`ip_allow_list: empty (works from any IP)`
        : html`ip_allow_list: <span class="mono">${joined(listAfter)}</span>`,
    );
    return { summary, details };
  }
  if (e.action === "expire") {
    const x = e.expired;
    const what = x === undefined ? "an entry" : x.entry;
    return {
      summary: `entry ${what}${x?.note ? ` (“${x.note}”)` : ""} expired`,
      details: [
        ...(x === undefined ? [] : [html`its expires_at: ${timeHtml(x.expires_at)}`]),
        listAfter.length === 0
          ? html`in force now: nothing (the key admits no address until its list is changed)`
          : html`in force now: <span class="mono">${joined(listAfter)}</span>`,
      ],
    };
  }
  if (e.action === "delete") {
    return {
      summary: "deleted",
      details:
        listBefore.length === 0 ? [] : [html`ip_allow_list was: <span class="mono">${joined(listBefore)}</span>`],
    };
  }
  const name = c["name"];
  if (name !== undefined) details.push(html`renamed from “${String(name.before)}” to “${String(name.after)}”`);
  const scopes = c["scopes"];
  if (scopes !== undefined) details.push(html`scopes: ${listChange(strings(scopes.before), strings(scopes.after))}`);
  const mode = c["mode"];
  if (mode !== undefined) details.push(html`mode: ${modeText(mode.before)} → ${modeText(mode.after)}`);
  const b = new Set(listBefore);
  const listChanged = listBefore.length !== listAfter.length || listAfter.some((x) => !b.has(x));
  if (listChanged) {
    details.push(
      listAfter.length === 0
        ? html`ip_allow_list: cleared, ${listChange(listBefore, listAfter)} (works from any IP now)`
        : html`ip_allow_list: ${listChange(listBefore, listAfter)}`,
    );
  }
  details.push(...detailChanges(c["ip_allow_list_entries"]));
  return { summary: details.length === 0 ? "updated (nothing changed)" : "updated", details };
}

interface EntryLine {
  entry: string;
  note: string | null;
  expires_at: string | null;
}

function entryLines(v: unknown): Map<string, EntryLine> {
  const out = new Map<string, EntryLine>();
  if (!Array.isArray(v)) return out;
  for (const x of v as unknown[]) {
    if (x !== null && typeof x === "object" && typeof (x as EntryLine).entry === "string") {
      out.set((x as EntryLine).entry, x as EntryLine);
    }
  }
  return out;
}

/** One sentence per entry kept whose note or expiry changed ("note of 10.0.0.1: “a” → “b”"). */
function detailChanges(change: { before: unknown; after: unknown } | undefined): SafeHtml[] {
  if (change === undefined) return [];
  const before = entryLines(change.before);
  const out: SafeHtml[] = [];
  for (const [entry, a] of entryLines(change.after)) {
    const b = before.get(entry);
    if (b === undefined) {
      if (a.note !== null || a.expires_at !== null) {
        out.push(
          html`<span class="mono">${entry}</span
            >${a.note !== null ? html`: note “${a.note}”` : ""}${a.expires_at !== null ? html`, expires ${timeHtml(a.expires_at)}` : ""}`,
        );
      }
      continue;
    }
    if (b.note !== a.note) {
      out.push(
        html`note of <span class="mono">${entry}</span>: ${b.note === null ? "none" : `“${b.note}”`} →
          ${a.note === null ? "none" : `“${a.note}”`}`,
      );
    }
    if (b.expires_at !== a.expires_at) {
      out.push(
        html`expiry of <span class="mono">${entry}</span>: ${b.expires_at === null ? "never" : timeHtml(b.expires_at)} →
          ${a.expires_at === null ? "never" : timeHtml(a.expires_at)}`,
      );
    }
  }
  return out;
}

/** The audit page: each change as sentences, naming the key; `nameOf` gives a key's current name. */
export function auditPage(
  ctx: PageContext,
  events: readonly AuditEvent[],
  next: string | null,
  nameOf: (id: string) => string | undefined,
): SafeHtml {
  const body = html`<h1>Audit log</h1>
    <p class="help">Every change to a key, newest first: what changed, who made it, from where, and when.</p>
    <ol class="events" id="audit-list">
      ${events.map((e) => {
        const { summary, details } = eventSentences(e);
        const named = e.changes["name"];
        const current = nameOf(e.key_id);
        // The name at the time of the event when it changed, else today's.
        const name =
          (typeof named?.after === "string" ? named.after : undefined) ??
          (typeof named?.before === "string" ? named.before : undefined) ??
          current ??
          e.key_id;
        return html`<li class="event">
          <p class="what">
            ${
              e.action === "import"
                ? html`<strong>keyfence keys import</strong>`
                : current === undefined
                  ? html`<strong>${name}</strong> <code>${e.key_id}</code>`
                  : html`<a href="/keys/${encodeURIComponent(e.key_id)}"><strong>${name}</strong></a>
                      <code>${e.key_id}</code>`
            }
            ${summary}
          </p>
          ${
            details.length > 0
              ? html`<ul class="changes">
                  ${details.map((d) => html`<li>${d}</li>`)}
                </ul>`
              : ""
          }
          <p class="meta">
            ${
              e.actor.type === "system"
                ? html`by keyfence itself · ${timeHtml(e.time)}`
                : html`by
                    ${e.actor.type === "operator" ? "operator" : e.actor.type === "cli" ? "command-line user" : "key"}
                    <strong>${e.actor.id}</strong
                    >${e.actor.via === "session" ? " (dashboard)" : ""}${e.confirmed ? html` <span class="tag">confirmed</span>` : ""}
                    ${e.client_ip === "" ? "" : html`from <code>${e.client_ip}</code>`} · ${timeHtml(e.time)}`
            }
          </p>
        </li>`;
      })}
    </ol>
    ${events.length === 0 ? html`<p class="help">No changes yet.</p>` : ""}
    ${next ? html`<nav class="pager"><a href="/audit?cursor=${encodeURIComponent(next)}">Older →</a></nav>` : ""}`;
  return layout(ctx, "Audit log", body);
}

/** The form's IP Allow List section: the entries, the caller's own IP, notes and expiries. */
function allowListFieldset(ctx: PageContext, key: KeyView | undefined): SafeHtml {
  return html`<fieldset id="allow-list">
    <legend>IP Allow List</legend>
    <p class="help" id="list-help">
      One IPv4 or IPv6 address or CIDR range per line, such as <code>203.0.113.4</code>, <code>198.51.100.0/24</code> or
      <code>2001:db8::/48</code>. <strong>An empty list means no restriction:</strong> the key then works from any IP.
    </p>
    <p class="current-ip">
      Your current IP: <code id="current-ip">${ctx.clientIp}</code
      ><button type="button" id="add-my-ip">Add my IP</button>
    </p>
    <label for="ip_allow_list">Entries</label>
    <textarea
      id="ip_allow_list"
      name="ip_allow_list"
      rows="8"
      spellcheck="false"
      autocapitalize="off"
      autocomplete="off"
      aria-describedby="list-help list-lines"
    >
${key?.ip_allow_list.join("\n") ?? ""}</textarea>
    <ol id="list-lines" class="lines" aria-live="polite" aria-label="Entries to fix"></ol>
    ${entryDetailsTable(key, Date.now())}
  </fieldset>`;
}

/** Where a new key's secret is shown once. */
const SECRET_PANEL: SafeHtml = html`<section id="secret-panel" hidden aria-labelledby="secret-title">
  <h2 id="secret-title">Copy the secret now</h2>
  <p class="warning">
    <strong>This secret will not be shown again.</strong> keyfence stores only its SHA-256. Store it in your secret
    manager before you leave this page.
  </p>
  <div class="secret">
    <code id="secret-value"></code><button type="button" id="copy-secret">Copy</button
    ><span id="copy-status" role="status"></span>
  </div>
  <p><a id="secret-key-link" href="/">Go to the key</a></p>
</section>`;

/** An edited key's observed sources, with a button to add each network. */
function sourcesSection(sources: readonly ObservedSource[]): SafeHtml {
  return html`<section aria-labelledby="sources-title">
    <h2 id="sources-title">Observed sources</h2>
    ${
      sources.length === 0
        ? html`<p class="help">No requests of this key seen since keyfence started.</p>`
        : html`<p class="help">
              Networks this key was recently used from (requests since start; “would refuse” counts what the current
              list refuses).
            </p>
            <table class="responsive" id="sources-table">
              <thead>
                <tr>
                  <th>Network</th>
                  <th>Requests</th>
                  <th>Refused</th>
                  <th>Last seen</th>
                  <th><span class="sr-only">Action</span></th>
                </tr>
              </thead>
              <tbody>
                ${sources.map(
                  (s) =>
                    html`<tr>
                      <td data-label="Network"><code>${s.network}</code></td>
                      <td data-label="Requests">${s.requests}</td>
                      <td data-label="Refused">${s.denied}</td>
                      <td data-label="Last seen">${timeHtml(s.last_seen)}</td>
                      <td>
                        <button type="button" class="link add-source" data-network="${s.network}">Add to list</button>
                      </td>
                    </tr>`,
                )}
              </tbody>
            </table>`
    }
  </section>`;
}
