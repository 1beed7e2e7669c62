"""`qemuvm smoke` end to end on real guests: a pass, each kind of failure, and the Debian image (slow)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from helpers import CI_SMOKE, guest_sets

pytestmark = pytest.mark.integration

RUN_TIMEOUT = "300"  # the whole run, on a loaded TCG host (the guest alone boots in ~3-10 s)


def smoke(*args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuvm", "smoke", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, check=False, env=os.environ.copy())


def report(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {case.get("name"): case for case in root.iter("testcase")}


def assert_nothing_left(home: Path) -> None:
    assert [p.name for p in home.iterdir() if not p.name.startswith(".")] == [], "an instance folder was left"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_smoke_passes_on_the_test_guest(test_guest, qemuvm_home, short_tmp):
    before = sha256(test_guest.data_disk)
    done = smoke(str(CI_SMOKE), *guest_sets(test_guest), "--junit", "out.xml", "--timeout", RUN_TIMEOUT,
                 "--json", cwd=short_tmp)
    assert done.returncode == 0, done.stderr
    cases = report(short_tmp / "out.xml")
    assert list(cases) == ["boot", "ready", "firmware", "kernel", "data-disk", "guest-ready"]
    assert not [c for c in cases.values() if c.find("failure") is not None or c.find("skipped") is not None]
    result = json.loads(done.stdout)
    assert result["ok"] and result["artifacts"] is None and result["instance"].startswith("ci-smoke-smoke-")
    # Plain, timestamped progress lines without a terminal.
    assert any(line.endswith(("] kernel: ok", "s)")) and "] kernel: ok (" in line for line in done.stderr.splitlines())
    assert not (short_tmp / "qemuvm-artifacts").exists()
    assert_nothing_left(qemuvm_home)
    assert sha256(test_guest.data_disk) == before  # the disk ran on an overlay


def test_a_wrong_expectation_fails_with_junit_and_artifacts(test_guest, qemuvm_home, short_tmp):
    done = smoke(str(CI_SMOKE), *guest_sets(test_guest), "--set", r"smoke.checks.1.expect=^5\.",
                 "--set", "display={vga: std}", "--junit", "out.xml", "--timeout", RUN_TIMEOUT, cwd=short_tmp)
    assert done.returncode == 1, done.stderr
    cases = report(short_tmp / "out.xml")
    failure = cases["kernel"].find("failure")
    assert failure is not None and "does not match" in failure.get("message")
    assert "cloud-amd64" in failure.text  # the evidence: what uname -r really said
    assert cases["data-disk"].find("failure") is None and cases["ready"].find("failure") is None
    (folder,) = (short_tmp / "qemuvm-artifacts").iterdir()
    names = {p.name for p in folder.iterdir()}
    assert {"serial.log", "qemu.log", "events.jsonl", "argv.json", "run.sh", "status.json",
            "screenshot.png"} <= names
    assert "QEMUVM_GUEST_READY" in (folder / "serial.log").read_text()
    assert (folder / "screenshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / "status.json").read_text())["state"] == "running"  # taken before teardown
    assert_nothing_left(qemuvm_home)


def test_a_guest_that_never_becomes_ready_times_out(test_guest, qemuvm_home, short_tmp):
    done = smoke(str(CI_SMOKE), *guest_sets(test_guest), "--set", "ready.serial=NEVER_PRINTED_MARKER",
                 "--set", "ready.ssh=false", "--timeout", "15", "--junit", "out.xml",
                 "--set", "cloud_init.user_data.password=hunter2", "--redact",
                 "--artifacts", "evidence", cwd=short_tmp)
    assert done.returncode == 1
    cases = report(short_tmp / "out.xml")
    assert "timed out" in cases["ready"].find("failure").get("message")  # the 15 s bound ended it
    # The evidence is as private as the instance (issue 11): 0700 folder, 0600 files; --redact blanks secrets.
    evidence = short_tmp / "evidence"
    assert evidence.stat().st_mode & 0o777 == 0o700
    assert {f.name: f.stat().st_mode & 0o777 for f in evidence.iterdir() if f.name != "junit.xml"} \
        == dict.fromkeys((f.name for f in evidence.iterdir() if f.name != "junit.xml"), 0o600)
    profile_copy = (evidence / "profile.yaml").read_text()
    assert "hunter2" not in profile_copy and "password: <redacted>" in profile_copy
    assert cases["kernel"].find("skipped") is not None
    assert (short_tmp / "evidence" / "serial.log").exists() and (short_tmp / "evidence" / "argv.json").exists()
    assert_nothing_left(qemuvm_home)


def test_qemu_dying_during_boot_fails_fast(test_guest, qemuvm_home, short_tmp):
    # A real death: the kernel finds no init, panics, panic=-1 reboots at once and -no-reboot makes QEMU exit.
    started = time.monotonic()
    done = smoke(str(CI_SMOKE), *guest_sets(test_guest),
                 "--set", "boot.cmdline=console=ttyS0 panic=-1 rdinit=/no-such-init",
                 "--set", "qemu.extra_args=[-no-reboot]", "--timeout", RUN_TIMEOUT, "--junit", "out.xml",
                 cwd=short_tmp)
    assert done.returncode == 1
    assert time.monotonic() - started < float(RUN_TIMEOUT) / 4  # not the timeout: the wait saw QEMU go
    cases = report(short_tmp / "out.xml")
    failure = cases["ready"].find("failure")
    assert "stopped" in failure.get("message") and "Kernel panic" in failure.text
    (folder,) = (short_tmp / "qemuvm-artifacts").iterdir()
    assert "Kernel panic" in (folder / "serial.log").read_text()
    assert json.loads((folder / "status.json").read_text())["state"] in ("stopped", "crashed")
    assert_nothing_left(qemuvm_home)


def test_keep_leaves_the_instance_running(test_guest, qemuvm_home, short_tmp):
    from qemuvm import api

    done = smoke(str(CI_SMOKE), *guest_sets(test_guest), "--keep", "--json", "--timeout", RUN_TIMEOUT,
                 cwd=short_tmp)
    name = json.loads(done.stdout)["instance"]
    try:
        assert done.returncode == 0, done.stderr
        assert api.status(name)["state"] == "running"
    finally:
        api.down(name, force=True)
        api.rm(name)


def test_an_invalid_profile_exits_2_before_booting(qemuvm_home, short_tmp):
    done = smoke(str(CI_SMOKE), "--set", "smoke.checks.0.expect=(", cwd=short_tmp)
    assert done.returncode == 2
    assert "smoke.checks[0]" in done.stderr
    assert_nothing_left(qemuvm_home)


@pytest.mark.slow
def test_smoke_on_the_debian_image(debian_image, qemuvm_home, short_tmp, monkeypatch):
    """The realistic image: systemd, OpenSSH, cloud-init with a per-instance key injected by qemuvm.

    The project's one boot of the Debian image (2 minutes under TCG), so it proves all of it at once: the image
    from scripts/build-debian-image boots to a login prompt, the NoCloud seed applies (hostname, runcmd), and
    SSH works with the key qemuvm generated and injected. It runs `--warm`, twice: the first run boots it and
    saves a template, the second is a clone of that template -- the same checks pass on a restored systemd
    guest (its sshd, its key, cloud-init's results), and neither run writes the image.

    The disk is the catalog's `image: debian-12`, served from loopback at the catalog's own path through
    QEMUVM_IMAGE_MIRROR, with a SHA512SUMS beside it as Debian publishes one: the first run pulls and verifies
    it, the second finds it in the cache (one download in all)."""
    from imageserver import ImageServer

    from qemuvm.runtime import catalog

    entry = catalog.find("debian-12", "x86_64", mirror="")
    www = short_tmp / "www"
    served = www / urllib.parse.urlsplit(entry.url).path.lstrip("/")  # the catalog's path below the mirror
    folder = served.parent
    folder.mkdir(parents=True)
    served.symlink_to(debian_image.disk)
    with open(debian_image.disk, "rb") as image:
        sha512 = hashlib.file_digest(image, "sha512").hexdigest()
    (folder / "SHA512SUMS").write_text(f"{'0' * 128}  debian-12-genericcloud-arm64.qcow2\n{sha512}  {served.name}\n")
    profile = short_tmp / "debian-smoke.yaml"
    profile.write_text(yaml.safe_dump(debian_image.profile(  # its disk: from the catalog, through the mirror
        "debian-smoke", disks=[{"image": "debian-12"}],
        cloud_init={"user_data": {"hostname": "smoked", "runcmd": [
            ["sh", "-c", "echo QEMUVM_RUNCMD_MARKER > /var/tmp/runcmd-marker"]]}},
        guest_agent=True,
        ready={"ssh": True, "timeout": "400s"},
        smoke={"timeout": "600s", "checks": [
            {"name": "login", "serial": "smoked login:|login:"},
            {"name": "agent", "agent": "hostname", "expect": "^smoked$"},  # Debian's qemu-guest-agent
            {"name": "cloud-init", "ssh": "cloud-init status --wait", "expect": "status: done"},
            {"name": "hostname", "ssh": "hostname", "expect": "^smoked$"},
            {"name": "runcmd", "ssh": "cat /var/tmp/runcmd-marker", "expect": "^QEMUVM_RUNCMD_MARKER$"},
            {"name": "kernel", "ssh": "uname -r", "expect": r"^6\."},
        ]})))
    before = debian_image.disk.stat().st_mtime_ns
    with ImageServer(www) as server:
        monkeypatch.setenv("QEMUVM_IMAGE_MIRROR", server.base)
        for run in ("makes the template", "is a clone"):
            done = smoke(str(profile), "--warm", "--junit", "out.xml", cwd=short_tmp, timeout=900)
            assert done.returncode == 0, (run, done.stderr)
            assert list(report(short_tmp / "out.xml")) == ["boot", "ready", "login", "agent", "cloud-init",
                                                            "hostname", "runcmd", "kernel"]
    assert server.requests[f"/{served.relative_to(www)}"] == 1  # pulled once, verified; the clone used the cache
    assert debian_image.disk.stat().st_mtime_ns == before
    templates = [p for p in (qemuvm_home / ".templates").iterdir() if not p.name.startswith(".")]
    assert len(templates) == 1  # the second run found the first one's template
    assert_nothing_left(qemuvm_home)


def test_a_missing_image_is_a_usage_error_with_a_report(test_guest, qemuvm_home, short_tmp):
    done = smoke(str(CI_SMOKE), *guest_sets(test_guest), "--set", "disks.0.file=/nonexistent/image.qcow2",
                 "--junit", "out.xml", cwd=short_tmp)
    assert done.returncode == 2
    assert "image.qcow2" in report(short_tmp / "out.xml")["boot"].find("failure").get("message")
    assert_nothing_left(qemuvm_home)


def test_ready_timeout_bounds_the_ready_step(test_guest, qemuvm_home, short_tmp):
    """smoke waited out its own 300 s where the profile's ready.timeout said 3 s (issue 30); `up` honoured it."""
    done = smoke(str(CI_SMOKE), *guest_sets(test_guest), "--set", "ready={serial: NEVER_PRINTED_MARKER, timeout: 3s}",
                 "--timeout", RUN_TIMEOUT, "--junit", "out.xml", cwd=short_tmp)
    assert done.returncode == 1, done.stderr
    message = report(short_tmp / "out.xml")["ready"].find("failure").get("message")
    assert "within 3 s" in message or "after 3 s" in message, message
    assert_nothing_left(qemuvm_home)


# What each interrupted step needs: overrides that make it last, and the progress line that says it began.
INTERRUPTED_AT = {
    "boot": ([], "boot: starting"),
    "ready": (["--set", "ready={serial: NEVER_PRINTED_MARKER}"], "ready: waiting"),
    "checks": (["--set", "smoke.checks=[{name: slow, ssh: 'sleep 600'}]"], "ready: ok"),
    "teardown": ([], "teardown: removing"),
}


@pytest.mark.parametrize("step", list(INTERRUPTED_AT))
def test_sigterm_at_any_step_tears_down_and_reports(step, test_guest, qemuvm_home, short_tmp):
    """What a CI job's timeout sends: SIGTERM left NAME-smoke-XXXX running forever (issue 30). At each step the
    VM is torn down, the JUnit file written, and smoke exits 128+15 saying why."""
    import signal

    sets, began = INTERRUPTED_AT[step]
    with subprocess.Popen([sys.executable, "-m", "qemuvm", "smoke", str(CI_SMOKE), *guest_sets(test_guest), *sets,
                           "--timeout", RUN_TIMEOUT, "--junit", "out.xml"], cwd=short_tmp, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as run:
        assert run.stderr is not None
        seen = []
        for line in run.stderr:  # the run's own progress lines say when the step has begun
            seen.append(line)
            if began in line:
                run.send_signal(signal.SIGTERM)
                break
        rest = run.stderr.read()
        code = run.wait(timeout=300)
    assert code == 128 + signal.SIGTERM, "".join(seen) + "--- after the signal:\n" + rest
    assert "interrupted by SIGTERM" in rest and "Traceback" not in rest, rest
    cases = report(short_tmp / "out.xml")  # written whatever the step
    if step != "teardown":
        interrupted = "slow" if step == "checks" else step
        assert "interrupted by SIGTERM" in cases[interrupted].find("failure").get("message")
    assert_nothing_left(qemuvm_home)
    [instance] = [word for line in seen if "instance " in line for word in line.split() if "-smoke-" in word]
    leftover = subprocess.run(["pgrep", "-f", f"process=qemu-{instance.rstrip(',')}"], capture_output=True, text=True)
    assert leftover.stdout == "", "a QEMU of the run is still there"
