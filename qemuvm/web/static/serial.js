// The VM's serial console in xterm.js, over the websocket /serial/NAME (the server holds the same console lock
// as `qemuvm console` while this page is attached).
"use strict";

const name = decodeURIComponent(location.pathname.split("/").pop());
document.getElementById("title").textContent = name;
document.title = `${name} — qemuvm serial`;
const term = new Terminal({convertEol: false, scrollback: 5000});
term.open(document.getElementById("terminal"));
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const socket = new WebSocket(`${scheme}//${location.host}/serial/${encodeURIComponent(name)}`);
socket.binaryType = "arraybuffer";
const status = document.getElementById("status");
const encoder = new TextEncoder();
socket.addEventListener("open", () => { status.textContent = "attached"; status.dataset.state = "attached"; });
socket.addEventListener("close", () => {
  status.textContent = "detached (the console is in use elsewhere, or the VM stopped)";
  status.dataset.state = "detached";
});
socket.addEventListener("message", event => term.write(new Uint8Array(event.data)));
term.onData(data => { if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data)); });
term.focus();
window.qemuvmTerm = term;
