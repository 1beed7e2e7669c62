// The instance list of `qemuvm web`: GET /api/instances (what `qemuvm ls --json` prints) every 1.5 s, and one
// button per action, each a POST /api/instances/NAME/ACTION whose error sentence is shown as it comes.
"use strict";

const ACTIONS = ["start", "down", "pause", "resume", "reboot", "reset", "screenshot", "rm"];
const ALIVE = new Set(["running", "paused", "starting", "shutdown"]);

function uptime(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.floor(seconds);
  return [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60].map(n => String(n).padStart(2, "0")).join(":");
}

function forwards(row) {
  return (row.forwards || []).map(f => `${f.host_address}:${f.host_port}->${f.guest_port}/${f.protocol}`).join(", ");
}

function vnc(row) {
  if (!row.vnc) return "";
  return row.vnc.unix ? "unix socket" : `${row.vnc.listen}:${row.vnc.port}`;
}

function showError(text) {
  const box = document.getElementById("error");
  box.textContent = text || "";
  box.hidden = !text;
}

async function act(name, action) {
  if (action === "rm" && !window.confirm(`Remove ${name} and its files?`)) return;
  showError("");
  const response = await fetch(`/api/instances/${encodeURIComponent(name)}/${action}`,
                               {method: "POST", credentials: "same-origin"});
  if (!response.ok) {
    let text = `${action} failed (HTTP ${response.status})`;
    try { text = (await response.json()).error || text; } catch (e) { /* not JSON */ }
    showError(text);
  } else if (action === "screenshot") {
    const figure = document.getElementById("shot");
    figure.querySelector("img").src = URL.createObjectURL(await response.blob());
    figure.querySelector("figcaption").textContent = `${name}, ${new Date().toLocaleTimeString()}`;
    figure.hidden = false;
  }
  refresh();
}

function render(rows) {
  const body = document.querySelector("#instances tbody");
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.name = row.name;
    const state = row.problem ? `${row.state} (${row.problem})` : row.state;
    for (const [key, text] of [["name", row.name], ["state", state], ["uptime", uptime(row.uptime_s)],
                               ["accel", row.accel || ""], ["forwards", forwards(row)],
                               ["restarts", String(row.restarts ?? 0)], ["vnc", vnc(row)]]) {
      const td = document.createElement("td");
      td.className = key;
      td.textContent = text;
      tr.append(td);
    }
    const actions = document.createElement("td");
    actions.className = "actions";
    for (const action of ACTIONS) {
      const button = document.createElement("button");
      button.textContent = action;
      button.dataset.action = action;
      button.addEventListener("click", () => act(row.name, action));
      actions.append(button);
    }
    if (ALIVE.has(row.state)) {
      for (const [path, text] of [["console", "screen"], ["serial", "serial"]]) {
        if (path === "console" && !row.vnc) continue;
        const link = document.createElement("a");
        link.href = `/${path}/${encodeURIComponent(row.name)}`;
        link.textContent = text;
        link.className = path;
        actions.append(link);
      }
    }
    tr.append(actions);
    body.append(tr);
  }
  document.getElementById("empty").hidden = rows.length > 0;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function refresh() {
  try {
    const response = await fetch("/api/instances", {credentials: "same-origin", cache: "no-store"});
    if (response.ok) render(await response.json());
  } catch (e) { /* the server went away: keep the last list */ }
}

refresh();
setInterval(refresh, 1500);
