"""Start a profile's argv in the real QEMU, paused (-S), ask QMP for the status, quit: what
test_golden_qemu.py does for every golden and test_libvirt_qemu.py for every imported libvirt domain.

The profile is made runnable on this machine first, rewriting only what the host cannot provide: accel tcg
(the host KVM is software-only), each file the profile names by one of the same kind in a short temp dir (an
image of the disk's format, a real loop device for a disk under /dev -- so the argv QEMU checks opens it with
host_device or host_cdrom as compiled --, the test guest's kernel for a kernel, a folder for a share), fixed
host forward ports become 0 (QEMU picks a free one) so parallel runs cannot collide; its helpers (virtiofsd,
passt, segment ports) are started first, as the supervisor does. Tap devices and bridges are made in a network
namespace of the test's own, where QEMU then runs (with qemu-bridge-helper's ACL for those bridges: netns.py);
profiles that need other host setup (hugepages) are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import netns
import pytest
from helpers import listening
from qemu.qmp import QMPClient

from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Profile
from qemuvm.qemu import passt, segment, shares, tpm
from qemuvm.qemu.arch import ARCHES
from qemuvm.qemu.compile import PortPlan, compile_argv
from qemuvm.qemu.facts import HostFacts
from qemuvm.qemu.probe import probe
from qemuvm.runtime import helpers, records, spawn

REPO = Path(__file__).resolve().parents[2]
# The test guest of each architecture (its kernel stands in for a profile's; conftest.py builds them).
GUESTS = {"x86_64": Path(os.environ.get("QEMUVM_TEST_GUEST_DIR") or REPO / "build" / "guest"),
          "aarch64": Path(os.environ.get("QEMUVM_TEST_GUEST_ARM64_DIR") or REPO / "build" / "guest-arm64")}
START_DEADLINE = 10.0


def skip_reason(profile: Profile) -> str | None:
    runnable_here = {"user", "passt", "segment", *(("tap", "bridge") if netns.usable() else ())}
    modes = {nic.mode for nic in profile.network} - runnable_here
    if modes:
        return f"network mode {'/'.join(sorted(modes))} needs root (for a namespace with its taps and bridges)"
    if profile.machine.hugepages:
        return "hugepages need a mounted hugetlbfs with reserved pages"
    if profile.boot.kernel and not (GUESTS[profile.machine.arch] / "vmlinuz").exists():
        return "direct kernel boot needs the test guest (scripts/build-test-guest)"
    if shutil.which(ARCHES[profile.machine.arch].binary) is None or shutil.which("qemu-img") is None:
        return f"{ARCHES[profile.machine.arch].binary} is not installed"
    return None


def _img(*args: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", *args], check=True, capture_output=True)


def loop_device(image: Path, cleanup: contextlib.ExitStack) -> str:
    """A block device over `image` (a loop device, detached at cleanup): what a disk under /dev is."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("a disk under /dev needs a real block device here: loop devices need root and losetup")
    device = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True,
                            check=True).stdout.strip()
    cleanup.callback(subprocess.run, ["losetup", "-d", device], check=False)
    return device


def runnable(profile: Profile, scratch: Path, paths: InstancePaths, cleanup: contextlib.ExitStack) -> Profile:
    """A copy of `profile` whose files exist in `scratch`, each of the kind the profile names, and that runs
    under TCG here."""
    machine = profile.machine.model_copy(update={
        "accel": "tcg", "cpu": None if profile.machine.cpu == "host" else profile.machine.cpu})
    disks = []
    for index, disk in enumerate(profile.disks):
        image = scratch / f"d{index}.{disk.image_format}"
        _img("-f", disk.image_format, str(image), "1M")
        # A block device stays one: compile opens it with host_device/host_cdrom, and QEMU checks that argv.
        file = loop_device(image, cleanup) if disk.file.startswith("/dev/") else str(image)
        if disk.ephemeral:  # what prepare does: an overlay naming the image as its backing file
            _img("-f", "qcow2", "-b", file, "-F", disk.image_format, str(paths.overlay(index)))
        disks.append(disk.model_copy(update={"file": file}))
    boot = profile.boot
    guest, binary = GUESTS[profile.machine.arch], ARCHES[profile.machine.arch].binary
    if boot.kernel:
        boot = boot.model_copy(update={
            "kernel": str(guest / "vmlinuz"), "initrd": str(guest / "initrd.gz") if boot.initrd else None})
    shares = []
    for index, share in enumerate(profile.shares):
        folder = scratch / f"s{index}"
        folder.mkdir()
        shares.append(share.model_copy(update={"source": str(folder)}))
    network = [nic.model_copy(update={"forwards": [f.model_copy(update={"host": 0}) for f in nic.forwards]})
               for nic in profile.network]
    if profile.cloud_init is not None:
        _img("-f", "raw", str(paths.seed_iso), "1M")  # compile only names the seed; any readable file does
    if profile.machine.tpm:  # swtpm needs its state folder; an empty one is a new TPM
        paths.tpm_state.mkdir(mode=0o700)
    if profile.machine.firmware == "uefi":
        shutil.copyfile(probe(binary).ovmf_vars or "/usr/share/OVMF/OVMF_VARS_4M.fd", paths.uefi_vars)
    display = profile.display
    qemu = profile.qemu.model_copy(update={"binary": binary})
    return profile.model_copy(update={"machine": machine, "disks": disks, "boot": boot, "shares": shares,
                                      "network": network, "display": display, "qemu": qemu})


def _vnc_searches(argv: list[str]) -> list[str]:
    """A fixed TCP VNC display may be taken by another VM: let QEMU itself take the first free display from
    it on (`to=`, up to 99 further and never past port 65535), rather than choosing a port here that another
    process could take before QEMU binds it."""
    out = list(argv)
    for index, arg in enumerate(out[:-1]):
        if arg == "-vnc" and not out[index + 1].startswith("unix:") and ",to=" not in out[index + 1]:
            display = int(out[index + 1].split(",")[0].rsplit(":", 1)[1])
            out[index + 1] += f",to={min(display + 99, 65535 - 5900)}"
    return out


async def _status(qmp_socket: Path) -> str:
    qmp = QMPClient("golden")
    await asyncio.wait_for(qmp.connect(str(qmp_socket)), 5)
    try:
        status = await asyncio.wait_for(qmp.execute("query-status"), 5)
        await asyncio.wait_for(qmp.execute("quit"), 5)
    finally:
        with contextlib.suppress(EOFError):  # normal after quit (QEMU-FACTS)
            await asyncio.wait_for(qmp.disconnect(), 5)
    return status["status"]


def _wait_for_socket(proc: subprocess.Popen[bytes], qmp_socket: Path, stderr: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while not (qmp_socket.exists() and listening(qmp_socket)):
        if proc.poll() is not None:
            pytest.fail(f"QEMU rejected the argv (exit {proc.returncode}):\n{stderr.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"QEMU did not create its QMP socket in {START_DEADLINE}s:\n{stderr.read_text()}")
        time.sleep(0.05)


def start_paused(profile: Profile, host: HostFacts, ports: PortPlan | None, scratch: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test unless QEMU starts `profile` (made runnable here) paused and quits cleanly."""
    reason = skip_reason(profile)
    if reason:
        pytest.skip(reason)
    paths = InstancePaths(scratch / "i")
    paths.root.mkdir(mode=0o700)
    with contextlib.ExitStack() as cleanup:
        ready = runnable(profile, scratch, paths, cleanup)
        argv = _vnc_searches(compile_argv(ready, paths, host, ports, start_paused=True))
        for disk in ready.disks:  # block devices are opened as such in the argv QEMU checks (an ephemeral one
            if disk.file.startswith("/dev/") and not disk.ephemeral:  # is its overlay's backing file instead)
                driver = "host_cdrom" if disk.is_cdrom else "host_device"
                assert any(arg.startswith(f"driver={driver},") and f"filename={disk.file}" in arg for arg in argv)
        # Helpers (virtiofsd, passt): QEMU connects to each at start, so they run first, as the supervisor does.
        plan = ports or PortPlan()
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(spawn.module_path()))  # a segment port runs `python -S`
        started = [helpers.start(records.Helper(**helper)) for helper in (
            *shares.helpers(ready, paths, host),
            *passt.helpers(ready, paths, host, plan.forwards, plan.ssh_host_port),
            *segment.helpers(ready, paths, sys.executable),
            *tpm.helpers(ready, paths, host))]
        stderr = scratch / "qemu.err"
        taps = [nic.ifname for nic in profile.network if nic.mode == "tap" and nic.ifname]
        bridges = sorted({nic.bridge or "br0" for nic in profile.network if nic.mode == "bridge" and not nic.network})
        if taps or any(nic.mode == "bridge" for nic in profile.network):
            # In a namespace of the test's own, where QEMU runs too: the tap devices it names, the bridges
            # qemu-bridge-helper joins (and its ACL for them); QEMU makes a qemuvm network's taps itself.
            space = cleanup.enter_context(netns.namespace())
            for tap in taps:
                netns.add_tap(space, tap)
            for bridge in bridges:
                netns.add_bridge(space, bridge)
            if bridges:
                cleanup.enter_context(netns.bridge_acl(space, bridges))
            argv = ["ip", "netns", "exec", space, *argv]
        run_paused(argv, stderr, paths.qmp_socket, started)


def run_paused(argv: list[str], stderr: Path, qmp_socket: Path,
               started: list[records.HelperState] | None = None) -> None:
    """Run argv (which starts QEMU paused with a QMP socket at qmp_socket): its status must be prelaunch, and
    it must quit cleanly when told; then stop the helpers `started`."""
    with stderr.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    try:
        _wait_for_socket(proc, qmp_socket, stderr)
        try:
            status = asyncio.run(_status(qmp_socket))
        except Exception as exc:  # QEMU may fail after creating its sockets: show why
            with contextlib.suppress(subprocess.TimeoutExpired):  # (one that lives is killed below)
                proc.wait(timeout=START_DEADLINE)
            pytest.fail(f"QMP failed ({exc!r}); QEMU exit {proc.returncode}:\n{stderr.read_text()}")
        assert status == "prelaunch"
        assert proc.wait(timeout=START_DEADLINE) == 0, stderr.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        helpers.stop(started or [], grace=2)
    assert "error" not in stderr.read_text().lower(), stderr.read_text()
