// The VM's screen: noVNC on the websocket /vnc/NAME, where the server has already logged in to the VM's VNC
// server (its password never reaches this page).
"use strict";

const name = decodeURIComponent(location.pathname.split("/").pop());
document.getElementById("title").textContent = name;
document.title = `${name} — qemuvm console`;
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const rfb = new NoVNC.default(document.getElementById("screen"),
                              `${scheme}//${location.host}/vnc/${encodeURIComponent(name)}`,
                              {wsProtocols: ["binary"]});
rfb.scaleViewport = true;
const status = document.getElementById("status");
rfb.addEventListener("connect", () => { status.textContent = "connected"; status.dataset.state = "connected"; });
rfb.addEventListener("disconnect", () => {
  status.textContent = "disconnected";
  status.dataset.state = "disconnected";
});
window.qemuvmRfb = rfb;
