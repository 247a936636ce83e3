// Ranking page. Completions are model output: they are only ever put in the page
// with textContent, never as HTML. Vanilla JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let item = null;     // {id, prompt, completions: [{id, text}]} in display order
let placed = [];     // [{id, tied}] best first; tied = same rank as the one above
let busy = false;
let lease = 0;       // seconds an untouched item stays ours (from /api/next)
let renewedAt = 0;   // when the server last renewed our hold on `item` (Date.now())

async function api(method, path, body) {
  const r = await fetch(path, {
    method, credentials: "same-origin",
    // X-Requested-With: the server refuses cookie writes without it (a cross-site form cannot add it).
    headers: { "X-Requested-With": "rlhfkit", "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = {};
  try { data = await r.json(); } catch (_) { /* empty body */ }
  if (r.status === 401) throw new Error("not signed in: open your private link again");
  return { status: r.status, ok: r.ok, data };
}

function say(text) { $("message").textContent = text || ""; }

function showProgress(p) { if (p) $("progress").textContent = "Done " + p.done + " / " + p.total; }

function leaseWords() {
  return lease >= 90 ? Math.round(lease / 60) + " minutes" : Math.round(lease) + " seconds";
}

function sayLost() {
  say("Your ranking of the last item was not saved: it lay untouched for more than " + leaseWords() +
      " and went to another annotator. Carry on with the item below.");
}

async function loadNext() {
  const r = await api("GET", "/api/next");
  if (!r.ok) { say(r.data.error || "could not load the next item"); return; }
  show(r.data);
}

function show(data) {
  showProgress(data.progress);
  lease = data.lease_seconds || 0;
  renewedAt = Date.now();
  item = data.item;
  placed = [];
  $("task").hidden = !item;
  $("finished").hidden = !!item;
  $("task").dataset.itemId = item ? String(item.id) : "";
  if (item) render();
}

function renderPrompt() {
  const box = $("prompt");
  box.replaceChildren();
  if (typeof item.prompt === "string") { box.textContent = item.prompt; return; }
  for (const m of item.prompt) {  // a chat conversation
    const p = document.createElement("div");
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = m.role + ":";
    p.append(role, document.createTextNode(m.content));
    box.appendChild(p);
  }
}

function groups() {  // placed -> [[ids of rank 1], [ids of rank 2], ...]
  const out = [];
  for (const p of placed) {
    if (p.tied && out.length) out[out.length - 1].push(p.id); else out.push([p.id]);
  }
  return out;
}

function card(c, index, rank, p, pos) {
  const li = document.createElement("li");
  li.className = "card" + (p && p.tied ? " tied" : "");
  li.draggable = true;
  li.dataset.id = String(c.id);
  li.dataset.num = String(index + 1);
  const num = document.createElement("span");
  num.className = "num";
  num.textContent = String(index + 1);
  li.appendChild(num);
  if (p) {
    const r = document.createElement("span");
    r.className = "rank";
    r.textContent = (p.tied ? "= " : "") + "rank " + rank;
    li.appendChild(r);
  }
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = c.text;
  li.appendChild(text);
  if (p && pos > 0) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "tie";
    b.textContent = p.tied ? "untie" : "tie with above";
    b.addEventListener("click", () => { p.tied = !p.tied; render(); });
    li.appendChild(b);
  }
  li.addEventListener("dragstart", (e) => {
    e.dataTransfer.setData("text/plain", String(c.id));
    li.classList.add("dragging");
  });
  li.addEventListener("dragend", () => li.classList.remove("dragging"));
  return li;
}

function render() {
  renderPrompt();
  const index = new Map(item.completions.map((c, i) => [c.id, i]));
  const pool = $("pool"), ranking = $("ranking");
  pool.replaceChildren();
  ranking.replaceChildren();
  const ids = new Set(placed.map((p) => p.id));
  item.completions.forEach((c, i) => { if (!ids.has(c.id)) pool.appendChild(card(c, i)); });
  let rank = 0;
  placed.forEach((p, pos) => {
    if (!(p.tied && pos > 0)) rank += 1;
    ranking.appendChild(card(item.completions[index.get(p.id)], index.get(p.id), rank, p, pos));
  });
}

function place(id, at) {  // move completion `id` into the ranking at position `at` (default: last)
  const old = placed.findIndex((p) => p.id === id);
  let entry = { id, tied: false };
  if (old >= 0) { entry = placed.splice(old, 1)[0]; if (old < at) at -= 1; }
  if (at === undefined || at > placed.length) at = placed.length;
  placed.splice(at, 0, entry);
  if (placed.length) placed[0].tied = false;  // the best cannot tie with nothing
  render();
}

function unplace(id) {
  placed = placed.filter((p) => p.id !== id);
  if (placed.length) placed[0].tied = false;
  render();
}

function dropIndex(list, y) {  // where in `list` a drop at height y lands
  const cards = [...list.querySelectorAll(".card:not(.dragging)")];
  const i = cards.findIndex((el) => { const b = el.getBoundingClientRect(); return y < b.top + b.height / 2; });
  return i < 0 ? cards.length : i;
}

for (const zone of [$("pool"), $("ranking")]) {
  zone.addEventListener("dragover", (e) => e.preventDefault());
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    const id = Number(e.dataTransfer.getData("text/plain"));
    if (!item || !item.completions.some((c) => c.id === id)) return;
    if (zone.id === "ranking") place(id, dropIndex(zone, e.clientY)); else unplace(id);
  });
}

async function send(action) {
  if (!item || busy) return;
  let body = { item_id: item.id, action };
  if (action === "rank") {
    const left = item.completions.filter((c) => !placed.some((p) => p.id === c.id));
    if (left.length === 1) place(left[0].id);
    else if (left.length > 1) { say("Place every completion first (" + left.length + " left)."); return; }
    body.ranking = groups();
  }
  busy = true;
  try {
    const r = await api("POST", "/api/labels", body);
    if (r.ok || r.status === 409) {  // 409: already stored (e.g. a retried submit); move on
      say(action === "skip" ? "Skipped." : "Saved.");
      await loadNext();
    } else if (r.status === 403 && r.data.code === "not_assigned") {  // the lease ran out and it was taken
      await loadNext();
      sayLost();
    } else {
      say(r.data.error || "could not save");
    }
  } catch (e) {
    say(e.message);
  } finally {
    busy = false;
  }
}

// Back after a long pause (over half the lease): ask for the item again. Reopening renews the
// lease; if the item went to someone else meanwhile, say so now, not at the next submit.
async function checkLease() {
  if (!item || busy || !lease || Date.now() - renewedAt < lease * 500) return;
  busy = true;
  try {
    const shownId = item.id;
    const r = await api("GET", "/api/next");
    if (!r.ok) return;
    if (r.data.item && r.data.item.id === shownId) { renewedAt = Date.now(); return; }
    show(r.data);
    sayLost();
  } catch (e) {
    say(e.message);
  } finally {
    busy = false;
  }
}

function tieLast() {
  if (placed.length < 2) { say("Place two completions before tying them."); return; }
  const last = placed[placed.length - 1];
  last.tied = !last.tied;
  render();
}

function undo() { if (placed.length) unplace(placed[placed.length - 1].id); }

document.addEventListener("keydown", (e) => {
  if (!item || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  let handled = true;
  if (/^[0-9]$/.test(k)) {
    const c = item.completions[k === "0" ? 9 : Number(k) - 1];
    if (c) { if (placed.some((p) => p.id === c.id)) unplace(c.id); else place(c.id); }
  } else if (k === "Enter") send("rank");
  else if (k === "s" || k === "S") send("skip");
  else if (k === "x" || k === "X") send("all_bad");
  else if (k === "t" || k === "T") tieLast();
  else if (k === "Backspace" || k === "u" || k === "U") undo();
  else handled = false;
  if (handled) e.preventDefault();  // also keeps Enter from re-clicking a focused button
  checkLease();
});
document.addEventListener("pointerdown", () => { checkLease(); });
document.addEventListener("visibilitychange", () => { if (!document.hidden) checkLease(); });

$("submit").addEventListener("click", () => send("rank"));
$("skip").addEventListener("click", () => send("skip"));
$("allbad").addEventListener("click", () => send("all_bad"));
$("tie").addEventListener("click", tieLast);
$("undo").addEventListener("click", undo);

(async function start() {
  try {
    const me = await api("GET", "/api/me");
    if (me.ok) $("who").textContent = me.data.name;
    await loadNext();
  } catch (e) {
    say(e.message);
  }
})();
