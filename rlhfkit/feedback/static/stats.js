// Admin statistics: progress and agreement, rendered as text only.
"use strict";
function row(tbody, cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c === null || c === undefined ? "n/a" : String(c);
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
}
function fmt(x) { return typeof x === "number" ? x.toFixed(3) : x; }
(async function () {
  const r = await fetch("/api/stats", { credentials: "same-origin" });
  const s = await r.json();
  if (!r.ok) { document.getElementById("message").textContent = s.error; return; }
  const o = document.querySelector("#overview tbody");
  row(o, ["items", s.items]);
  row(o, ["items with " + s.per_item + " label(s)", s.items_complete]);
  row(o, ["rankings / all bad / skips", [s.labels.rank, s.labels.all_bad, s.labels.skip].join(" / ")]);
  row(o, ["annotators who labelled", s.agreement.annotators]);
  row(o, ["pair units judged by 2+ annotators", s.agreement.pair_units]);
  row(o, ["Cohen's kappa (pairs, exactly 2 annotators)", fmt(s.agreement.cohen_kappa)]);
  row(o, ["Krippendorff's alpha (pairs, nominal)", fmt(s.agreement.krippendorff_alpha_nominal)]);
  const p = document.querySelector("#people tbody");
  for (const a of s.annotators) {
    const k = s.per_annotator[a.name] || { rank: 0, all_bad: 0, skip: 0 };
    row(p, [a.name, k.rank, k.all_bad, k.skip]);
  }
})();
