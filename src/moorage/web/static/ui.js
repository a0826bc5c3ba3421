// Moorage web UI: copy buttons, and the Cluster page kept live by polling its JSON.
"use strict";

function text(tag, value) {
  const el = document.createElement(tag);
  el.textContent = value === null || value === undefined ? "" : String(value);
  return el;
}

function showCluster(view) {
  const scenario = document.getElementById("scenario");
  scenario.textContent = view.scenario;
  scenario.className = "scenario scenario-" + view.scenario;
  const q = view.quorum;
  document.getElementById("quorum").textContent =
    q ? "quorum " + q.healthy + "/" + q.members + ", needs " + q.needed : "";
  const problem = document.getElementById("problem");
  const why = (view.error || "") + (view.problem ? " This replica: " + view.problem : "");
  problem.textContent = why;
  problem.hidden = !why;
  const rows = document.getElementById("replicas");
  rows.replaceChildren();
  for (const r of view.replicas || []) {
    const tr = document.createElement("tr");
    const id = text("td", "");
    id.appendChild(text("code", r.id));
    tr.append(id, text("td", r.url), text("td", r.role), text("td", r.state),
      text("td", r.heartbeat_age === null ? "none" : r.heartbeat_age + " s"),
      text("td", r.raft_index), text("td", r.error));
    rows.appendChild(tr);
  }
  document.getElementById("action").textContent = view.action || "";
  document.getElementById("next").textContent = view.next || "";
  document.getElementById("updated").textContent =
    "Updated " + new Date().toLocaleTimeString() + "; updates every few seconds.";
}

async function poll(section) {
  try {
    const resp = await fetch(section.dataset.source, {credentials: "same-origin"});
    if (resp.status === 401) { window.location.reload(); return; }
    if (resp.ok) { showCluster(await resp.json()); }
  } catch (err) {
    document.getElementById("updated").textContent = "This replica did not answer: " + err;
  }
  setTimeout(() => poll(section), 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", () => {
      const source = document.getElementById(button.dataset.copy);
      navigator.clipboard.writeText(source.textContent).then(
        () => { button.textContent = "Copied"; }, () => { button.textContent = "Select and copy"; });
    });
  }
  const cluster = document.getElementById("cluster");
  if (cluster) { setTimeout(() => poll(cluster), 2000); }
});
