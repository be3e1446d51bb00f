/**
 * The dashboard's only script: saves keys through the management API (with the
 * session's CSRF token), marks invalid allow-list entries on their own line
 * with the server's message, and asks for confirmation when the server says so.
 * All validation happens on the server; nothing here can drift from it.
 */

interface PageData {
  csrf: string;
  clientIp: string;
  totp: boolean;
  key: { id: string } | null;
}

interface ApiErrorBody {
  message: string;
  errors?: Array<{ field: string; message: string }>;
}

interface EntryBody {
  entry: string;
  note: string | null;
  expires_at: string | null;
}

interface KeyBody {
  id: string;
  name: string;
  scopes: string[];
  ip_allow_list: string[];
  ip_allow_list_entries: EntryBody[];
  secret?: string;
}

const dataEl = document.getElementById("kf-data");
const data = dataEl ? (JSON.parse(dataEl.textContent ?? "{}") as PageData) : undefined;

function byId<T extends HTMLElement>(id: string): T | null {
  return document.getElementById(id) as T | null;
}

async function call(method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const res = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": data?.csrf ?? "" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text === "" ? null : (JSON.parse(text) as unknown) };
}

/** The textarea's non-empty lines, with their 1-based line numbers. */
function entries(textarea: HTMLTextAreaElement): Array<{ line: number; text: string }> {
  return textarea.value
    .split("\n")
    .map((raw, i) => ({ line: i + 1, text: raw.trim() }))
    .filter((e) => e.text !== "");
}

/** Lists the entries the server refused, each with its line number and the server's message; nothing else. */
function renderLines(textarea: HTMLTextAreaElement, errors: Map<number, string>): void {
  const list = byId<HTMLOListElement>("list-lines");
  if (!list) return;
  list.replaceChildren();
  for (const e of entries(textarea)) {
    const msg = errors.get(e.line);
    if (msg === undefined) continue;
    const li = document.createElement("li");
    li.dataset["line"] = String(e.line);
    li.className = "invalid";
    const no = document.createElement("span");
    no.className = "no";
    no.textContent = `line ${e.line}`;
    const text = document.createElement("span");
    text.textContent = e.text;
    const m = document.createElement("span");
    m.className = "msg";
    m.textContent = msg;
    li.append(no, text, m);
    list.append(li);
  }
  list.hidden = list.childElementCount === 0;
  textarea.setAttribute("aria-invalid", errors.size > 0 ? "true" : "false");
}

const RELATIVE = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
const LOCAL = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const EXACT = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });
const UNITS: Array<[Intl.RelativeTimeFormatUnit, number]> = [
  ["year", 365 * 86_400],
  ["month", 30 * 86_400],
  ["week", 7 * 86_400],
  ["day", 86_400],
  ["hour", 3600],
  ["minute", 60],
];

/** "3 minutes ago", "yesterday", "now": the age of `then`, in its largest whole unit. */
function age(then: Date, now: number): string {
  const seconds = Math.round((then.getTime() - now) / 1000);
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size) return RELATIVE.format(Math.trunc(seconds / size), unit);
  }
  return Math.abs(seconds) < 45 ? "just now" : RELATIVE.format(seconds, "second");
}

/** Shows every server-rendered UTC time as local time with its age; the exact local and UTC values on hover. */
function localTimes(): void {
  const now = Date.now();
  for (const t of document.querySelectorAll<HTMLTimeElement>("time[datetime]")) {
    const d = new Date(t.dateTime);
    if (Number.isNaN(d.getTime())) continue;
    t.textContent = `${LOCAL.format(d)} (${age(d, now)})`;
    t.title = `${EXACT.format(d)} · ${d.toISOString()}`;
  }
}

/** `iso` as a `datetime-local` value in the browser's zone (seconds kept). */
function localInput(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const p = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A `datetime-local` value (the browser's zone) as RFC 3339 UTC with whole seconds; null when empty. */
function fromLocalInput(value: string): string | null {
  if (value === "") return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? value : d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** The note and expiry rows, by entry as written in the textarea. */
function detailRows(): Map<string, HTMLTableRowElement> {
  const rows = new Map<string, HTMLTableRowElement>();
  for (const tr of document.querySelectorAll<HTMLTableRowElement>("#entry-details tbody tr")) {
    rows.set(tr.dataset["entry"] ?? "", tr);
  }
  return rows;
}

/** A new row for `entry`, like the server's. */
function detailRow(entry: string, note: string, expiresAt: string): HTMLTableRowElement {
  const tr = document.createElement("tr");
  tr.dataset["entry"] = entry;
  const cell = (label: string): HTMLTableCellElement => {
    const td = document.createElement("td");
    td.dataset["label"] = label;
    tr.append(td);
    return td;
  };
  const code = document.createElement("code");
  code.textContent = entry;
  cell("Entry").append(code);
  const n = document.createElement("input");
  n.type = "text";
  n.className = "entry-note";
  n.maxLength = 200;
  n.value = note;
  n.setAttribute("aria-label", `Note for ${entry}`);
  cell("Note").append(n);
  const x = document.createElement("input");
  x.type = "datetime-local";
  x.className = "entry-expiry";
  x.step = "1";
  x.setAttribute("aria-label", `Expiry of ${entry}`);
  x.dataset["expiresAt"] = expiresAt;
  const left = document.createElement("span");
  left.className = "time-left help";
  const box = document.createElement("div");
  box.className = "expiry";
  box.append(x, left);
  cell("Expires").append(box);
  return tr;
}

/** Fills each expiry picker from its UTC value and says the time left ("expires in 3 days"). */
function showExpiries(): void {
  const now = Date.now();
  for (const x of document.querySelectorAll<HTMLInputElement>("#entry-details input.entry-expiry")) {
    const iso = x.dataset["expiresAt"] ?? "";
    if (iso !== "" && x.value === "") x.value = localInput(iso);
    updateLeft(x, now);
  }
}

function updateLeft(x: HTMLInputElement, now: number): void {
  const left = x.parentElement?.querySelector<HTMLElement>(".time-left");
  if (!left) return;
  const iso = fromLocalInput(x.value);
  const d = iso === null ? undefined : new Date(iso);
  if (d === undefined || Number.isNaN(d.getTime())) {
    left.textContent = "no expiry";
    left.className = "time-left help";
    return;
  }
  const gone = d.getTime() <= now;
  left.textContent = `${gone ? "expired" : "expires"} ${age(d, now)}`;
  left.className = gone ? "time-left expired" : "time-left";
  left.title = `${EXACT.format(d)} · ${d.toISOString()}`;
}

/** One row per entry in the textarea (values kept for entries already there), in the textarea's order. */
function syncDetails(lines: readonly string[]): void {
  const body = document.querySelector("#entry-details tbody");
  if (!body) return;
  const rows = detailRows();
  const next: HTMLTableRowElement[] = [];
  for (const entry of new Set(lines)) next.push(rows.get(entry) ?? detailRow(entry, "", ""));
  body.replaceChildren(...next);
}

/** The list to send: a string for an entry without note and expiry, else `{entry, note, expires_at}`. */
function listBody(lines: readonly string[]): unknown[] {
  const rows = detailRows();
  return lines.map((entry) => {
    const tr = rows.get(entry);
    const note = tr?.querySelector<HTMLInputElement>("input.entry-note")?.value ?? "";
    const exp = fromLocalInput(tr?.querySelector<HTMLInputElement>("input.entry-expiry")?.value ?? "");
    return note === "" && exp === null ? entry : { entry, note: note === "" ? null : note, expires_at: exp };
  });
}

/** The key form as a request body. */
function formBody(lines: ReadonlyArray<{ text: string }>): Record<string, unknown> {
  const name = byId<HTMLInputElement>("name")?.value.trim() ?? "";
  const scopes = (byId<HTMLInputElement>("scopes")?.value ?? "").split(/[\s,]+/).filter((s) => s !== "");
  const modeValue = byId<HTMLSelectElement>("mode")?.value ?? "";
  const sandbox = byId<HTMLInputElement>("sandbox")?.checked ?? false;
  const body: Record<string, unknown> = { name, scopes, ip_allow_list: listBody(lines.map((l) => l.text)), sandbox };
  if (modeValue !== "") body["mode"] = modeValue;
  return body;
}

/** The fields of `body` whose values differ from `shown`'s. */
function changedFields(body: Record<string, unknown>, shown: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(body).filter(([field, value]) => JSON.stringify(value) !== JSON.stringify(shown[field])),
  );
}

/** Rebuilds the rows from the server's view of the key. */
function resetDetails(entries: readonly EntryBody[]): void {
  const body = document.querySelector("#entry-details tbody");
  if (!body) return;
  body.replaceChildren(...entries.map((e) => detailRow(e.entry, e.note ?? "", e.expires_at ?? "")));
  showExpiries();
}

let pendingConfirm: ((ok: boolean) => void) | undefined;

/** Opens the confirmation dialog; resolves true once the server accepted the token (and code). */
function askConfirmation(): Promise<boolean> {
  const dialog = byId<HTMLDialogElement>("confirm-dialog");
  if (!dialog) return Promise.resolve(false);
  const error = byId("confirm-error");
  if (error) error.textContent = "";
  const token = byId<HTMLInputElement>("confirm-token");
  if (token) token.value = "";
  const code = byId<HTMLInputElement>("confirm-code");
  if (code) code.value = "";
  dialog.showModal();
  token?.focus();
  return new Promise((resolve) => {
    pendingConfirm = resolve;
  });
}

function setupConfirmDialog(): void {
  const dialog = byId<HTMLDialogElement>("confirm-dialog");
  const form = byId<HTMLFormElement>("confirm-form");
  if (!dialog || !form) return;
  const finish = (ok: boolean): void => {
    dialog.close();
    pendingConfirm?.(ok);
    pendingConfirm = undefined;
  };
  byId("confirm-cancel")?.addEventListener("click", () => finish(false));
  dialog.addEventListener("cancel", () => finish(false));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = byId<HTMLInputElement>("confirm-token")?.value ?? "";
    const code = byId<HTMLInputElement>("confirm-code")?.value ?? "";
    void call("POST", "/session/confirm", { token, code }).then(({ status, json }) => {
      if (status === 204) finish(true);
      else {
        const error = byId("confirm-error");
        if (error) error.textContent = (json as ApiErrorBody | null)?.message ?? `failed (${status})`;
      }
    });
  });
}

function setupKeyForm(): void {
  const form = byId<HTMLFormElement>("key-form");
  const textarea = byId<HTMLTextAreaElement>("ip_allow_list");
  if (!form || !textarea || !data) return;
  const formError = byId("form-error");
  const id = form.dataset["id"] ?? "";
  let errors = new Map<number, string>();
  renderLines(textarea, errors);
  showExpiries();
  const details = document.getElementById("entry-details");
  details?.addEventListener("input", (ev) => {
    const t = ev.target;
    if (t instanceof HTMLInputElement && t.classList.contains("entry-expiry")) updateLeft(t, Date.now());
  });
  textarea.addEventListener("input", () => {
    errors = new Map();
    renderLines(textarea, errors);
    syncDetails(entries(textarea).map((e) => e.text));
  });
  const addLine = (value: string): void => {
    const existing = entries(textarea).map((e) => e.text);
    if (existing.includes(value)) return;
    textarea.value = textarea.value.replace(/\s*$/, "") + (textarea.value.trim() === "" ? "" : "\n") + value;
    renderLines(textarea, errors);
    syncDetails(entries(textarea).map((e) => e.text));
  };
  byId("add-my-ip")?.addEventListener("click", () => addLine(data.clientIp));
  for (const b of document.querySelectorAll<HTMLButtonElement>("button.add-source")) {
    b.addEventListener("click", () => addLine(b.dataset["network"] ?? ""));
  }

  const formStatus = byId("form-status");
  // The key as the page showed it (loaded or last saved): a save sends only the fields changed since, so a
  // rename never puts back an entry another operator removed meanwhile.
  let shown = id === "" ? undefined : formBody(entries(textarea));
  const save = async (): Promise<void> => {
    if (formError) formError.textContent = "";
    if (formStatus) formStatus.textContent = "";
    const lines = entries(textarea);
    const full = formBody(lines);
    const body = shown === undefined ? full : changedFields(full, shown);
    const { status, json } =
      id === ""
        ? await call("POST", "/v1/api-keys", body)
        : await call("PATCH", `/v1/api-keys/${encodeURIComponent(id)}`, body);
    if (status === 403 && (json as ApiErrorBody).message === "confirmation required") {
      if (await askConfirmation()) await save();
      else if (formError) formError.textContent = "Not saved: the change needs your confirmation.";
      return;
    }
    if (status === 400) {
      const e = json as ApiErrorBody;
      errors = new Map();
      const other: string[] = [];
      for (const fe of e.errors ?? []) {
        const m = /^ip_allow_list\[(\d+)\](?:\.(\w+))?$/.exec(fe.field);
        const line = m ? lines[Number(m[1])]?.line : undefined;
        const sub = m?.[2] === undefined || m[2] === "entry" ? "" : `${m[2]}: `;
        if (line !== undefined)
          errors.set(line, `${errors.has(line) ? `${errors.get(line) ?? ""}; ` : ""}${sub}${fe.message}`);
        else other.push(`${fe.field}: ${fe.message}`);
      }
      renderLines(textarea, errors);
      if (formError)
        formError.textContent =
          other.length > 0
            ? other.join("; ")
            : `${errors.size} ${errors.size === 1 ? "entry needs" : "entries need"} fixing (marked below the list).`;
      return;
    }
    if (status === 200 || status === 201) {
      const k = json as KeyBody;
      textarea.value = k.ip_allow_list.join("\n");
      errors = new Map();
      renderLines(textarea, errors);
      resetDetails(k.ip_allow_list_entries);
      if (id !== "") shown = formBody(entries(textarea));
      if (k.secret !== undefined) showSecret(form, k.id, k.secret);
      else if (formStatus) formStatus.textContent = "Saved.";
      return;
    }
    if (formError) formError.textContent = (json as ApiErrorBody | null)?.message ?? `failed (${status})`;
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void save();
  });

  setupCopySecret();
  setupDelete(id, formError);
}

/** Shows a new key's secret once, in place of the form. */
function showSecret(form: HTMLFormElement, id: string, secret: string): void {
  const panel = byId("secret-panel");
  const value = byId("secret-value");
  const link = byId<HTMLAnchorElement>("secret-key-link");
  if (value) value.textContent = secret;
  if (link) link.href = `/keys/${encodeURIComponent(id)}`;
  form.hidden = true;
  if (panel) {
    panel.hidden = false;
    byId("copy-secret")?.focus();
  }
}

/** The secret panel's copy button. */
function setupCopySecret(): void {
  byId("copy-secret")?.addEventListener("click", () => {
    const secret = byId("secret-value")?.textContent ?? "";
    const status = byId("copy-status");
    navigator.clipboard.writeText(secret).then(
      () => {
        if (status) status.textContent = "Copied.";
      },
      () => {
        if (status) status.textContent = "Copy failed: select the secret and copy it by hand.";
      },
    );
  });
}

/** The edit form's delete button, with confirmation when the key is restricted. */
function setupDelete(id: string, formError: HTMLElement | null): void {
  const del = async (): Promise<void> => {
    const { status, json } = await call("DELETE", `/v1/api-keys/${encodeURIComponent(id)}`);
    if (status === 403 && (json as ApiErrorBody).message === "confirmation required") {
      if (await askConfirmation()) await del();
      return;
    }
    if (status === 204) window.location.assign("/");
    else if (formError) formError.textContent = (json as ApiErrorBody | null)?.message ?? `failed (${status})`;
  };
  byId("delete-key")?.addEventListener("click", () => {
    if (window.confirm("Delete this key? Requests with it will no longer be recognised.")) void del();
  });
}

setupConfirmDialog();
setupKeyForm();
localTimes();
setInterval(localTimes, 30_000);
