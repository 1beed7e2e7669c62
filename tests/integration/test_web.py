"""`qemuvm web` in a real headless browser (Debian's chromium and chromium-driver, through selenium) against real
VMs: the list and its actions, the VNC console drawing the guest's screen, the serial console running a command,
pause from the page as `status` then says, the token everywhere (pages, API, websockets), /metrics as
Prometheus parses it, and nothing listening beyond loopback."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from helpers import CI_SMOKE, cli, guest_overrides, poll

from qemuvm.testing import VM, vm

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@dataclass
class Server:
    url: str  # as printed: with ?token=
    base: str
    token: str
    proc: subprocess.Popen[str]


def start_server(*args: str) -> Server:
    proc = subprocess.Popen([sys.executable, "-m", "qemuvm", "web", "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline().strip() if proc.stdout else ""  # the first line, once it listens
    if not line.startswith(("http://", "https://")):
        proc.kill()
        pytest.fail(f"qemuvm web printed {line!r}; stderr: {proc.communicate(timeout=10)[1]}")
    base, token = line.split("/?token=")
    return Server(line, base, token, proc)


def stop_server(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=20) == 0


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="qv", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QEMUVM_HOME", str(folder))
        yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def guest(test_guest, home: Path) -> Iterator[VM]:
    """A running test guest with a screen on a VNC unix socket and a root shell on its serial console."""
    overrides = {**guest_overrides(test_guest), "boot.cmdline": "console=ttyS0 qemuvm.shell",
                 "display": {"vga": "std", "vnc": {"port": "unix"}}}
    with vm(CI_SMOKE, name="webvm", **overrides) as running:
        yield running


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    running = start_server()
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout: float = 60):  # -> what the condition returned
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


# The page redraws its table every 1.5 s: rows are read and buttons pressed in one script each, never through an
# element reference that a redraw could make stale.
def row_state(driver, name: str) -> str:
    return driver.execute_script(
        "const cell = document.querySelector(`tr[data-name='${arguments[0]}'] td.state`);"
        "return cell ? cell.textContent : '';", name)


def click(driver, name: str, action: str) -> None:
    assert driver.execute_script(
        "const b = document.querySelector(`tr[data-name='${arguments[0]}'] button[data-action='${arguments[1]}']`);"
        "if (!b) return false; setTimeout(() => b.click(), 0); return true;", name, action), (name, action)


def request(server: Server, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
            bearer: bool = False) -> tuple[int, bytes, dict[str, str]]:
    all_headers = {**(headers or {}), **({"Authorization": f"Bearer {server.token}"} if bearer else {})}
    req = urllib.request.Request(server.base + path, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_the_page_lists_the_vms_and_pause_is_what_status_says(guest: VM, server: Server, browser) -> None:
    browser.get(server.url)
    assert "token=" not in browser.current_url  # the token moved into the HttpOnly cookie
    wait_for(browser, lambda d: row_state(d, guest.name) == "running")
    click(browser, guest.name, "pause")
    wait_for(browser, lambda d: row_state(d, guest.name) == "paused")
    assert json.loads(cli("status", guest.name, "--json").stdout)["state"] == "paused"
    click(browser, guest.name, "resume")
    wait_for(browser, lambda d: row_state(d, guest.name) == "running")
    assert json.loads(cli("status", guest.name, "--json").stdout)["state"] == "running"


def test_an_action_that_fails_shows_its_sentence(guest: VM, server: Server, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.url)
    wait_for(browser, lambda d: row_state(d, guest.name) == "running")
    click(browser, guest.name, "rm")  # it runs: the API's own sentence comes back
    browser.switch_to.alert.accept()
    error = wait_for(browser, lambda d: d.find_element(By.ID, "error").text or None)
    expected = json.loads(request(server, f"/api/instances/{guest.name}/rm", method="POST", bearer=True)[1])
    assert error == expected["error"] and guest.name in error


def test_the_console_draws_the_guests_screen(guest: VM, server: Server, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.url)
    browser.get(f"{server.base}/console/{guest.name}")
    wait_for(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "connected")
    script = """const c = document.querySelector('#screen canvas'); if (!c || !c.width) return 0;
                const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let lit = 0;
                for (let i = 0; i < px.length; i += 4) { if (px[i] || px[i + 1] || px[i + 2]) lit++; } return lit;"""
    assert wait_for(browser, lambda d: d.execute_script(script) or None) > 100  # SeaBIOS and the kernel's text


def test_a_command_typed_in_the_serial_pane_prints_its_output(guest: VM, server: Server, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.url)
    browser.get(f"{server.base}/serial/{guest.name}")
    wait_for(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "attached")
    # While the page is attached, `qemuvm console` finds the console taken (the same lock), with one sentence.
    busy = cli("console", guest.name, input="")
    assert busy.returncode == 1 and "is in use" in busy.stderr, busy.stderr
    browser.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea").send_keys("\necho web-$((6 * 7))\n")
    screen = """const b = window.qemuvmTerm.buffer.active; const lines = [];
                for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
                return lines.join('\\n');"""
    assert wait_for(browser, lambda d: "web-42" in d.execute_script(screen))
    browser.get("about:blank")  # detaches: the lock is free again
    poll("the console lock to be free", lambda: "is in use" not in cli("console", guest.name, input="").stderr or None)


def test_a_vm_defined_elsewhere_starts_from_the_page_and_rm_asks_first(test_guest, guest: VM, server: Server,
                                                                       browser) -> None:
    defined = cli("define", str(CI_SMOKE), "--name", "webnew",
                  *[arg for key, value in guest_overrides(test_guest).items() if key != "ready.timeout"
                    for arg in ("--set", f"{key}={value}")])
    assert defined.returncode == 0, defined.stderr
    browser.get(server.url)
    wait_for(browser, lambda d: row_state(d, "webnew").startswith("stopped"))
    click(browser, "webnew", "start")
    wait_for(browser, lambda d: row_state(d, "webnew") == "running")
    assert json.loads(cli("status", "webnew", "--json").stdout)["state"] == "running"
    # The page's start does not wait for the guest: an ACPI request before its init listens is ignored, and down
    # would then wait out its 60 s before forcing.
    assert cli("wait", "webnew", "--serial", "QEMUVM_GUEST_READY").returncode == 0
    click(browser, "webnew", "down")
    wait_for(browser, lambda d: row_state(d, "webnew") == "stopped", timeout=120)
    click(browser, "webnew", "rm")
    browser.switch_to.alert.dismiss()  # "Remove webnew and its files?" -- no
    assert cli("status", "webnew").returncode == 0
    click(browser, "webnew", "rm")
    browser.switch_to.alert.accept()
    wait_for(browser, lambda d: d.execute_script("return !document.querySelector(`tr[data-name='webnew']`)"))
    assert cli("status", "webnew").returncode == 2


def test_without_the_token_everything_is_refused(guest: VM, server: Server) -> None:
    for path in ("/", "/api/instances", f"/console/{guest.name}", f"/serial/{guest.name}", "/metrics",
                 "/static/app.js", "/static/vendor/novnc/rfb.js"):
        status, body, _ = request(server, path)
        assert (status, body.startswith(b"401")) == (401, True), path
    assert request(server, f"/api/instances/{guest.name}/pause", method="POST")[0] == 401
    # A cross-site POST riding the cookie, and websockets without the token or from another origin.
    cookie = {"Cookie": f"qemuvm_web={server.token}"}
    assert request(server, f"/api/instances/{guest.name}/pause", method="POST",
                   headers={**cookie, "Origin": "http://evil.example"})[0] == 401
    assert json.loads(cli("status", guest.name, "--json").stdout)["state"] == "running"
    for path, headers in ((f"/vnc/{guest.name}", {}), (f"/serial/{guest.name}", {}),
                          (f"/vnc/{guest.name}", {**cookie, "Origin": "http://evil.example"})):
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **headers}
        assert request(server, path, headers=upgrade)[0] == 401, (path, headers)
    assert request(server, "/api/instances", bearer=True)[0] == 200


def test_the_api_returns_what_ls_prints(guest: VM, server: Server) -> None:
    status, body, _ = request(server, "/api/instances", bearer=True)
    assert status == 200
    shown = {row["name"]: row for row in json.loads(body)}
    listed = {row["name"]: row for row in json.loads(cli("ls", "--json").stdout)}
    assert set(shown) == set(listed) and shown[guest.name]["state"] == listed[guest.name]["state"] == "running"
    assert shown[guest.name]["forwards"] == listed[guest.name]["forwards"]
    png = request(server, f"/api/instances/{guest.name}/screenshot", method="POST", bearer=True)
    assert png[0] == 200 and png[1].startswith(b"\x89PNG")
    assert request(server, f"/api/instances/{guest.name}/pause", bearer=True)[0] == 405  # GET changes nothing
    assert request(server, "/api/instances/nosuchvm/pause", method="POST", bearer=True)[0] == 404


def test_metrics_parse_and_carry_the_per_vm_families(guest: VM, server: Server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    status, body, headers = request(server, "/metrics", bearer=True)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {(s.name, s.labels.get("name"), s.labels.get("state"), s.labels.get("device")): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    assert samples[("qemuvm_instance_up", guest.name, None, None)] == 1.0
    assert samples[("qemuvm_instance_state", guest.name, "running", None)] == 1.0
    assert samples[("qemuvm_qemu_cpu_seconds_total", guest.name, None, None)] > 0
    assert samples[("qemuvm_qemu_resident_memory_bytes", guest.name, None, None)] > 0
    assert samples[("qemuvm_guest_memory_bytes", guest.name, None, None)] == 256 << 20
    assert samples[("qemuvm_disk_read_bytes_total", guest.name, None, "disk0")] > 0  # the guest mounted it
    status, body, headers = request(server, "/metrics", bearer=True,
                                    headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["Content-Type"].startswith("application/openmetrics-text") and body.rstrip().endswith(b"# EOF")
    printed = cli("metrics")
    assert printed.returncode == 0 and f'qemuvm_instance_up{{name="{guest.name}"}} 1.0' in printed.stdout


def test_nothing_listens_beyond_loopback(server: Server) -> None:
    listening = [c.laddr.ip for c in psutil.Process(server.proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(ip in ("127.0.0.1", "::1") for ip in listening)
    refused = cli("web", "--listen", "0.0.0.0", "--port", "0")
    assert (refused.returncode, refused.stderr.strip()) == (
        2, "qemuvm: --listen 0.0.0.0 is beyond loopback: give --tls-cert and --tls-key (the access token would "
           "cross the network in clear), or listen on 127.0.0.1")


def test_tls_and_a_token_file(home: Path, short_tmp: Path) -> None:
    """HTTPS with the given certificate; the token file is made 0600 and the same token serves the next start."""
    import ssl

    cert, key = short_tmp / "cert.pem", short_tmp / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                           "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                           "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate here: {made.stderr[-200:]!r}")
    token_file = short_tmp / "token"
    first = start_server("--tls-cert", str(cert), "--tls-key", str(key), "--token-file", str(token_file))
    try:
        assert first.url.startswith("https://127.0.0.1:") and oct(token_file.stat().st_mode & 0o777) == "0o600"
        context = ssl.create_default_context(cafile=str(cert))
        req = urllib.request.Request(first.base + "/api/instances", headers={"Authorization": f"Bearer {first.token}"})
        with urllib.request.urlopen(req, timeout=30, context=context) as response:
            assert response.status == 200
    finally:
        stop_server(first)
    again = start_server("--token-file", str(token_file))
    stop_server(again)
    assert again.token == first.token == token_file.read_text().strip()
