"""`qemuvm web`: a browser page for the instances (the list, their actions, a VNC console through noVNC, the serial
console through xterm.js) and `/metrics` for Prometheus; `qemuvm metrics` prints the same metrics once.

Layers: auth.py decides who may do what (pure), rfb.py does the VNC handshake the proxy answers for the browser,
metrics.py collects per-VM figures, server.py is the aiohttp application. Nothing here is imported unless the
command is `web` or `metrics` (tests/unit/test_web_unit.py checks that `up` loads none of it).
"""
