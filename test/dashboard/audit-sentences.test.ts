/** The audit page's sentences (no browser needed): one table of events and what they read as. */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { AuditEvent } from "../../src/admin/audit.js";
import { eventSentences, timeHtml } from "../../src/admin/dashboard/pages.js";

function event(over: Partial<AuditEvent>): AuditEvent {
  return {
    id: 1,
    time: "2026-11-30T07:00:00.123Z",
    action: "update",
    actor: { type: "operator", id: "ops", via: "token" },
    client_ip: "127.0.0.1",
    key_id: "k1",
    ip_allow_list: { before: [], after: [] },
    changes: {},
    confirmed: false,
    ...over,
  };
}

/** The sentences as a reader sees them: tags dropped, entities decoded, spaces collapsed. */
function read(e: AuditEvent): string[] {
  const { summary, details } = eventSentences(e);
  const text = (h: { text: string }): string =>
    h.text
      .replace(/<[^>]*>/g, "")
      .replace(/&lt;/g, "<")
      .replace(/&gt;/g, ">")
      .replace(/&quot;/g, '"')
      .replace(/&#39;/g, "'")
      .replace(/&amp;/g, "&")
      .replace(/\s+/g, " ")
      .trim();
  return [summary, ...details.map(text)];
}

const cases: Array<{ desc: string; e: Partial<AuditEvent>; reads: string[] }> = [
  {
    desc: "an import batch names the file and the keys it wrote",
    e: {
      action: "import",
      actor: { type: "cli", id: "alice@host" },
      client_ip: "",
      key_id: "",
      ip_allow_list: { before: null, after: null },
      import: { from: "/srv/keys.yaml", key_ids: ["k_a", "k_<b>"] },
    },
    reads: ["imported from /srv/keys.yaml: 2 keys written", "keys: k_a, k_<b>"],
  },
  {
    desc: "an import of one key",
    e: { action: "import", actor: { type: "cli", id: "u@h" }, import: { from: "k.yaml", key_ids: ["k_a"] } },
    reads: ["imported from k.yaml: 1 key written", "keys: k_a"],
  },
  {
    desc: "create with scopes, a mode and a list",
    e: {
      action: "create",
      changes: {
        name: { before: null, after: "Mailer" },
        scopes: { before: null, after: ["messages:send", "api_keys:write"] },
        mode: { before: null, after: "report" },
      },
      ip_allow_list: { before: null, after: ["10.0.0.0/8", "2001:db8::1"] },
    },
    reads: ["created with scopes messages:send, api_keys:write, mode report", "ip_allow_list: 10.0.0.0/8, 2001:db8::1"],
  },
  {
    desc: "create with nothing",
    e: {
      action: "create",
      changes: { name: { before: null, after: "x" } },
      ip_allow_list: { before: null, after: [] },
    },
    reads: ["created with no scopes", "ip_allow_list: empty (works from any IP)"],
  },
  {
    desc: "entries added and removed",
    e: { ip_allow_list: { before: ["1.2.3.4", "10.0.0.1"], after: ["10.0.0.1", "10.0.0.0/8"] } },
    reads: ["updated", "ip_allow_list: added 10.0.0.0/8, removed 1.2.3.4"],
  },
  {
    desc: "list cleared",
    e: { ip_allow_list: { before: ["1.2.3.4"], after: [] } },
    reads: ["updated", "ip_allow_list: cleared, removed 1.2.3.4 (works from any IP now)"],
  },
  {
    desc: "same entries in another order: no list change",
    e: { ip_allow_list: { before: ["1.2.3.4", "5.6.7.8"], after: ["5.6.7.8", "1.2.3.4"] } },
    reads: ["updated (nothing changed)"],
  },
  {
    desc: "rename, scopes and mode to and from the global mode",
    e: {
      changes: {
        name: { before: "Old <b>", after: 'New "one"' },
        scopes: { before: ["a", "b"], after: ["b", "c"] },
        mode: { before: null, after: "enforce" },
      },
    },
    reads: [
      "updated",
      'renamed from “Old <b>” to “New "one"”',
      "scopes: added c, removed a",
      "mode: the global mode → enforce",
    ],
  },
  {
    desc: "mode back to the global one",
    e: { changes: { mode: { before: "report", after: null } } },
    reads: ["updated", "mode: report → the global mode"],
  },
  {
    desc: "delete of a restricted key",
    e: {
      action: "delete",
      changes: { name: { before: "x", after: null } },
      ip_allow_list: { before: ["1.2.3.4"], after: null },
    },
    reads: ["deleted", "ip_allow_list was: 1.2.3.4"],
  },
  {
    desc: "delete of an unrestricted key",
    e: { action: "delete", ip_allow_list: { before: [], after: null } },
    reads: ["deleted"],
  },
];

for (const { desc, e, reads } of cases) {
  test(`audit sentence: ${desc}`, () => {
    const sentences = read(event(e));
    assert.deepEqual(sentences, reads);
    for (const s of sentences) assert.doesNotMatch(s, /null|\[|\]|undefined/, "no JSON, no null");
  });
}

test("times: UTC in the markup with the exact value as title; anything unparsable as plain text", () => {
  assert.equal(
    timeHtml("2026-11-30T07:00:00.123Z").text,
    '<time datetime="2026-11-30T07:00:00.123Z" title="2026-11-30T07:00:00.123Z">2026-11-30 07:00 UTC</time>',
  );
  assert.equal(
    timeHtml("2026-11-30T08:00:00+01:00").text,
    '<time datetime="2026-11-30T07:00:00.000Z" title="2026-11-30T08:00:00+01:00">2026-11-30 07:00 UTC</time>',
  );
  assert.equal(timeHtml("<not a time>").text, "&lt;not a time&gt;");
});
