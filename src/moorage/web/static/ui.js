// Moorage web UI: copy buttons, and the Cluster page kept live by server-sent events
// (cluster.events), or by polling its JSON when the stream fails.
"use strict";

function text(tag, value) {
  const el = document.createElement(tag);
  el.textContent = value === null || value === undefined ? "" : String(value);
  return el;
}

function showCluster(view, how) {
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
    "Updated " + new Date().toLocaleTimeString() + "; " + how + ".";
}

// Polling, after the stream failed; the stream is tried again after 15 good polls.
async function poll(section, good = 0) {
  try {
    const resp = await fetch(section.dataset.source, {credentials: "same-origin"});
    if (resp.status === 401) { window.location.reload(); return; }
    if (resp.ok) {
      showCluster(await resp.json(), "polled every few seconds");
      good += 1;
    }
  } catch (err) {
    document.getElementById("updated").textContent = "This replica did not answer: " + err;
  }
  if (good >= 15 && section.dataset.events) { stream(section); return; }
  setTimeout(() => poll(section, good), 2000);
}

// The stream, while it works; polling from the first time it fails for good (an HTTP
// error, or three errors in a row without an event between them).
function stream(section) {
  if (!window.EventSource) { setTimeout(() => poll(section), 2000); return; }
  const source = new EventSource(section.dataset.events);
  let failures = 0;
  section.dataset.live = "connecting";
  source.addEventListener("cluster", (event) => {
    failures = 0;
    section.dataset.live = "stream";
    showCluster(JSON.parse(event.data), "live");
  });
  source.addEventListener("error", () => {
    failures += 1;
    if (source.readyState === EventSource.CLOSED || failures >= 3) {
      source.close();
      section.dataset.live = "polling";
      setTimeout(() => poll(section), 2000);
    }
  });
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
  if (cluster) { stream(cluster); }
});
