"""The one page of ``gcl serve``: HTML, CSS and JavaScript inline, nothing fetched from elsewhere.

It works offline and needs no build step. The script asks ``/api/limits`` every second and builds
the DOM with ``textContent`` only: a limit name, a host or a label is never parsed as HTML. The
server sends the hashes of the script and the style in its Content-Security-Policy, so nothing else
can run on the page.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
:root { color-scheme: light dark; --fg: #1d2125; --dim: #6b7280; --bg: #f7f7f8; --card: #fff; --line: #e3e4e8;
  --ok: #2f9e44; --warn: #e8a317; --full: #d9480f; --err: #c92a2a; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6e6e6; --dim: #9aa0a6; --bg: #16181c; --card: #1f2228; --line: #33373e; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header.top { display: flex; flex-wrap: wrap; gap: 0 1em; align-items: baseline; padding: 10px 16px;
  border-bottom: 1px solid var(--line);
  background: var(--card); }
header.top h1 { font-size: 16px; margin: 0; white-space: nowrap; }
#db { color: var(--dim); font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
#status { margin-left: auto; color: var(--dim); white-space: nowrap; }
#status.error { color: var(--err); white-space: normal; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(540px, 100%), 1fr)); gap: 12px;
  padding: 12px 16px; }
.empty { color: var(--dim); padding: 16px; }
section.limit { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
  min-width: 0; }
section.limit.off { opacity: .65; }
.head { display: flex; gap: .6em; align-items: baseline; flex-wrap: wrap; }
.head h2 { font-size: 15px; margin: 0; overflow-wrap: anywhere; }
.badge { font-size: 11px; padding: 0 6px; border-radius: 8px; border: 1px solid var(--line); color: var(--dim); }
.usage { display: flex; gap: .6em; align-items: center; margin: 6px 0; }
.bar { flex: 1; height: 12px; border-radius: 6px; background: var(--line); overflow: hidden; }
.fill { height: 100%; background: var(--ok); }
.fill.half { background: var(--warn); }
.fill.full { background: var(--full); }
.used { font-variant-numeric: tabular-nums; white-space: nowrap; }
.facts { color: var(--dim); margin: 2px 0 6px; display: flex; flex-wrap: wrap; column-gap: 1.2em; }
.facts span { white-space: nowrap; }
.facts b { color: var(--fg); font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin-top: 4px; table-layout: auto; }
caption { text-align: left; font-weight: 600; padding: 4px 0 2px; }
th, td { text-align: left; padding: 1px 8px 1px 0; white-space: nowrap; font-variant-numeric: tabular-nums; }
th { color: var(--dim); font-weight: 500; font-size: 12px; }
td.text { white-space: normal; overflow-wrap: anywhere; }
td.num, th.num { text-align: right; }
tr.dead td { color: var(--dim); text-decoration: line-through; }
.none { color: var(--dim); margin: 4px 0 0; }
"""

SCRIPT = """
"use strict";
const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function name(text) { return el("bdi", null, text); }  // a right-to-left name keeps to its place

function duration(s) {
  if (s === null || s === undefined) return "-";
  if (s < 1) return Math.round(s * 1000) + "ms";
  if (s < 60) return Math.round(s) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m";
  if (s < 86400) {
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return m ? h + "h" + m + "m" : h + "h";
  }
  return Math.floor(s / 86400) + "d";
}
function waitText(s) {
  if (s === null || s === undefined) return "-";
  if (s >= 600) return ">10m";
  if (s < 0.01) return Number((s * 1000).toPrecision(2)) + "ms";
  if (s < 1) return Math.round(s * 1000) + "ms";
  return s >= 60 ? duration(s) : Number(s.toPrecision(2)) + "s";
}
function count(n) {
  if (n < 1e6) return String(n);
  for (const [size, suffix] of [[1e12, "T"], [1e9, "G"], [1e6, "M"]]) {
    if (n >= size) return Number((n / size).toPrecision(3)) + suffix;
  }
  return String(n);
}

function table(caption, columns, rows) {
  const t = el("table");
  t.append(el("caption", null, caption));
  const head = el("tr");
  for (const [title, cls] of columns) head.append(el("th", cls, title));
  t.createTHead().append(head);
  const body = t.createTBody();
  for (const row of rows) body.append(row);
  return t;
}
function row(cls, cells) {
  const tr = el("tr", cls);
  for (const [value, type] of cells) {
    const td = el("td", type);
    if (value instanceof Node) td.append(value); else td.textContent = String(value);
    tr.append(td);
  }
  return tr;
}

function card(limit) {
  const section = el("section", "limit" + (limit.active ? "" : " off"));
  section.dataset.limit = limit.name;
  const head = el("div", "head");
  head.append(el("h2", "name"));
  head.firstChild.append(name(limit.name));
  if (!limit.active) head.append(el("span", "badge", "inactive: lets everything through"));
  if (limit.slot_decay_per_second > 0) head.append(el("span", "badge", "decay " +
    Number(limit.slot_decay_per_second.toPrecision(3)) + "/s"));
  section.append(head);

  const usage = el("div", "usage");
  const bar = el("div", "bar");
  const fill = el("div", "fill");
  const used = limit.active_slots, slots = limit.limit;
  const share = slots > 0 ? Math.min(used, slots) / slots : (used > 0 ? 1 : 0);
  fill.style.width = (share * 100).toFixed(1) + "%";
  if (slots === 0 ? used > 0 : used >= slots) fill.classList.add("full");
  else if (used * 2 >= slots && slots > 0) fill.classList.add("half");
  bar.append(fill);
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", String(slots));
  bar.setAttribute("aria-valuenow", String(used));
  usage.append(bar, el("span", "used", count(used) + " / " + count(slots) + " used"));
  section.append(usage);

  const h = limit.history, stats = limit.stats;
  const facts = el("div", "facts");
  const fact = (label, value) => {
    const span = el("span", null, label + " ");
    span.append(el("b", null, value));
    facts.append(span);
  };
  fact("holders", limit.holders.length);
  fact("waiters", limit.waiters.length);
  fact("oldest wait", duration(h.oldest_wait_seconds));
  fact("p50 wait", waitText(h.wait_p50_seconds));
  fact("p95 wait", waitText(h.wait_p95_seconds));
  if (stats) {
    fact("acquired", count(h.acquisitions));
    fact("timed out", count(stats.timeouts));
    fact("refused", count(stats.refusals));
  }
  section.append(facts);

  const holders = limit.holders.map((lease) => row("holder", [
    [lease.id], [lease.token === null ? "-" : lease.token, "num"], [lease.pid === null ? "-" : lease.pid, "num pid"],
    [lease.host, "text"], [lease.label, "text"], [count(lease.slots), "num"], [duration(lease.age_seconds), "num"],
    [duration(lease.expires_in_seconds), "num"],
  ]));
  for (const lease of limit.reclaimable) {
    holders.push(row("holder dead", [
      [lease.id], [lease.token === null ? "-" : lease.token, "num"], [lease.pid === null ? "-" : lease.pid, "num"],
      [lease.host, "text"], [lease.label + " (dead or ended: reclaimed by the next acquisition)", "text"],
      [count(lease.slots), "num"], [duration(lease.age_seconds), "num"], ["-", "num"],
    ]));
  }
  if (holders.length) {
    section.append(table("Holders", [["lease"], ["token", "num"], ["pid", "num"], ["host"], ["label"],
      ["slots", "num"], ["age", "num"], ["expires in", "num"]], holders));
  } else {
    section.append(el("p", "none", "No holders."));
  }
  if (limit.waiters.length) {
    const waiters = limit.waiters.map((w, i) => row("waiter", [
      [i + 1, "num"], [w.pid === null ? "-" : w.pid, "num pid"], [w.label, "text"], [w.kind],
      [count(w.slots), "num"], [duration(w.age_seconds), "num"],
    ]));
    section.append(table("Waiters (first come, first served)", [["#", "num"], ["pid", "num"], ["label"], ["kind"],
      ["slots", "num"], ["waiting for", "num"]], waiters));
  } else {
    section.append(el("p", "none", "No waiters."));
  }
  return section;
}

function render(limits) {
  const main = document.getElementById("limits");
  if (!limits.length) {
    main.replaceChildren(el("p", "empty", "No limits yet: gcl create NAME --limit N"));
    return;
  }
  main.replaceChildren(...limits.map(card));
}

const status = document.getElementById("status");
async function refresh() {
  try {
    const response = await fetch("/api/limits", { headers, cache: "no-store" });
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    render(await response.json());
    status.className = "";
    status.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    status.className = "error";
    status.textContent = "not updated since " + (status.dataset.last || "start") + ": " + error.message;
    return setTimeout(refresh, 1000);
  }
  status.dataset.last = new Date().toLocaleTimeString();
  setTimeout(refresh, 1000);
}
document.getElementById("db").textContent = document.querySelector('meta[name="gcl-db"]').content;
refresh();
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_hash(SCRIPT)}; style-src {_hash(STYLE)}; connect-src 'self'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only this page's own script and style run; it talks only to its own server."""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="gcl-db" content="{db}">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>gcl serve</title>
<style>{style}</style>
</head>
<body>
<header class="top"><h1>gcl serve</h1><span id="db"></span><span id="status">loading…</span></header>
<main id="limits"><p class="empty">Loading… (this page needs JavaScript)</p></main>
<script>{script}</script>
</body>
</html>
"""


def page(db: str) -> bytes:
    """The page for the state file at *db* (its path is the only value put in the HTML, escaped)."""
    import html

    return _TEMPLATE.format(db=html.escape(db, quote=True), style=STYLE, script=SCRIPT).encode("utf-8")


__all__ = ["CONTENT_SECURITY_POLICY", "SCRIPT", "STYLE", "page"]
