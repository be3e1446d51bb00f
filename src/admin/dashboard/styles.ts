/** The dashboard's only stylesheet, served by keyfence itself under a content-hashed name. */
export const STYLES = `
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --soft: #f6f8fa; --accent: #0969da;
  --danger: #cf222e; --ok: #1a7f37; --warn-bg: #fff8c5; --warn-line: #d4a72c; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg); line-height: 1.5; font-size: 15px; }
a { color: var(--accent); }
code, textarea, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13px; }
code, .mono, td, ol.events, ol.lines { overflow-wrap: anywhere; }
header.top { display: flex; flex-wrap: wrap; align-items: center; gap: 12px 20px; padding: 10px 20px; border-bottom: 1px solid var(--line); background: var(--soft); }
header.top .brand { font-weight: 700; text-decoration: none; color: var(--fg); }
header.top nav { display: flex; gap: 16px; flex: 1; flex-wrap: wrap; }
header.top form { margin: 0; }
header.top .who { color: var(--muted); font-size: 13px; }
main { max-width: 980px; margin: 0 auto; padding: 20px; }
h1 { font-size: 22px; margin: 8px 0 16px; }
h2 { font-size: 17px; margin: 24px 0 8px; }
.help { color: var(--muted); font-size: 13px; margin: 4px 0 8px; }
.field { margin: 0 0 16px; }
label { display: block; font-weight: 600; margin-bottom: 4px; }
input[type=text], input[type=password], input[type=search], select, textarea { width: 100%; max-width: 640px; padding: 7px 9px; border: 1px solid var(--line); border-radius: 6px; font: inherit; background: #fff; }
textarea { min-height: 9em; font-family: ui-monospace, Menlo, Consolas, monospace; }
input:focus, select:focus, textarea:focus, button:focus, a:focus { outline: 2px solid var(--accent); outline-offset: 1px; }
[aria-invalid=true] { border-color: var(--danger); }
button { font: inherit; padding: 6px 14px; border-radius: 6px; border: 1px solid var(--line); background: var(--soft); cursor: pointer; }
button.primary { background: #1f883d; border-color: #1a7f37; color: #fff; font-weight: 600; }
button.danger { color: var(--danger); }
button.link { border: 0; background: none; color: var(--accent); padding: 0 4px; }
fieldset { border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px 16px; margin: 0 0 16px; max-width: 680px; }
legend { font-weight: 700; padding: 0 6px; }
.current-ip { display: flex; flex-wrap: wrap; align-items: center; gap: 8px; margin: 8px 0; }
ol.lines { list-style: none; margin: 8px 0 0; padding: 0; max-width: 640px; }
ol.lines li { display: flex; flex-wrap: wrap; gap: 4px 10px; padding: 3px 8px; border-left: 3px solid transparent; font-family: ui-monospace, Menlo, monospace; font-size: 13px; }
ol.lines li .no { color: var(--muted); min-width: 3.5em; }
ol.lines li.invalid { border-left-color: var(--danger); background: #ffebe9; }
ol.lines li .msg { font-family: system-ui, sans-serif; color: var(--danger); flex-basis: 100%; }
.error { color: var(--danger); margin: 8px 0; }
.error:empty, .success:empty, ol.lines:empty { display: none; }
.success { color: var(--ok); background: #dafbe1; border: 1px solid #4ac26b; border-radius: 6px; padding: 6px 10px; margin: 8px 0; max-width: 640px; font-weight: 600; }
.success::before { content: "✓ "; }
.notice { padding: 10px 14px; border: 1px solid var(--line); border-radius: 6px; background: var(--soft); margin: 12px 0; }
.warning { padding: 10px 14px; border: 1px solid var(--warn-line); background: var(--warn-bg); border-radius: 6px; }
.secret { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 10px 0; }
.secret code { padding: 6px 8px; background: var(--soft); border: 1px solid var(--line); border-radius: 6px; word-break: break-all; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 7px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 13px; color: var(--muted); font-weight: 600; }
.tag { display: inline-block; padding: 0 6px; border: 1px solid var(--line); border-radius: 10px; font-size: 12px; margin: 1px 2px 1px 0; }
.unrestricted { color: var(--muted); }
.expired { color: var(--danger); }
h3.sub { font-size: 15px; margin: 16px 0 4px; }
#allow-list { min-width: 0; }
#entry-details td > *, #entry-details .expiry { min-width: 0; }
#entry-details .expiry { display: flex; flex-direction: column; gap: 2px; flex: 1; }
#entry-details input { width: 100%; min-width: 0; max-width: 100%; flex: 1; }
#entry-details input[type=datetime-local] { padding: 6px 8px; border: 1px solid var(--line); border-radius: 6px; font: inherit; }
#entry-details .time-left { font-size: 13px; }
#entry-details:not(:has(tbody tr)) { display: none; }
.add { color: var(--ok); }
.remove { color: var(--danger); }
.toolbar { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-end; margin-bottom: 14px; }
.toolbar form { display: flex; gap: 8px; align-items: flex-end; flex: 1; min-width: 240px; }
.toolbar label { margin: 0; }
.pager { display: flex; gap: 16px; margin: 14px 0; }
ol.events { list-style: none; margin: 0; padding: 0; }
ol.events > li { padding: 10px 0; border-bottom: 1px solid var(--line); }
ol.events p { margin: 0 0 2px; }
ol.events ul.changes { margin: 2px 0 4px; padding-left: 20px; }
ol.events .meta { color: var(--muted); font-size: 13px; }
.actions { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 12px; }
.signin { max-width: 420px; margin: 8vh auto; padding: 0 20px; }
dialog { border: 1px solid var(--line); border-radius: 10px; padding: 20px; max-width: min(440px, 92vw); }
dialog::backdrop { background: rgba(31, 35, 40, 0.45); }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
@media (max-width: 640px) {
  main { padding: 12px; }
  header.top { gap: 4px 12px; padding: 6px 12px; font-size: 14px; }
  header.top nav { gap: 12px; flex: 1 1 auto; }
  header.top button { padding: 2px 8px; font-size: 13px; }
  header.top .wide-only, .toolbar > a { display: none; } /* "New key" is in the header too */
  h1 { font-size: 19px; margin: 4px 0 10px; }
  table.responsive thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  table.responsive, table.responsive tbody { display: block; }
  table.responsive td > * { min-width: 0; }
  table.responsive tr { display: block; border-bottom: 1px solid var(--line); padding: 6px 0; }
  table.responsive td { display: flex; gap: 8px; border: 0; padding: 2px 4px; }
  table.responsive td::before { content: attr(data-label); color: var(--muted); min-width: 7em; font-size: 13px; }
}
`;
