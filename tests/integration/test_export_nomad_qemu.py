"""What `qemuvm export nomad` writes runs in the real QEMU: the command line Nomad's qemu driver builds from
the job (drivers/qemu/driver.go: its own options, then `args`, then the user-mode NIC with one hostfwd per
port_map entry and protocol, and `-enable-kvm -cpu host` under kvm) starts paused and quits cleanly, for
every example profile whose files exist on this machine (under TCG, as everything here)."""

from __future__ import annotations

import socket
from pathlib import Path

import hcl2
import pytest
from paused import run_paused

from qemuvm.convert import io
from qemuvm.errors import UsageError

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "profiles").glob("*.yaml"))



def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def driver_argv(config: dict, memory: int, task_dir: Path) -> list[str]:
    """The qemu driver's StartTask, for a job's config block (ports: free ones on this machine)."""
    image = config["image_path"]
    argv = ["qemu-system-x86_64", "-machine", f"type=pc,accel={config['accelerator']}", "-name",
            Path(image).name, "-m", f"{memory}M", "-drive", f"file={image},if={config['drive_interface']}",
            "-nographic"]
    if config.get("graceful_shutdown"):
        argv += ["-monitor", f"unix:{task_dir / 'qemu-monitor.sock'},server,nowait"]
    if config.get("guest_agent"):
        argv += ["-chardev", f"socket,path={task_dir / 'qga.sock'},server,nowait,id=qga0",
                 "-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
    argv += config["args"]
    forwards = [f"hostfwd={proto}::{_free_port()}-:{guest}" for entry in config.get("port_map", [])
                for guest in entry.values() for proto in ("udp", "tcp")]
    if forwards:
        argv += ["-netdev", "user,id=user.0," + ",".join(forwards), "-device", "virtio-net,netdev=user.0"]
    if config["accelerator"] == "kvm":
        argv += ["-enable-kvm", "-cpu", "host"]
    return argv


def _unmeta(value: object) -> object:
    """python-hcl2's parse without its markers (`__is_block__`)."""
    if isinstance(value, dict):
        return {k: _unmeta(v) for k, v in value.items() if not k.startswith("__")}
    return [_unmeta(v) for v in value] if isinstance(value, list) else value


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_nomad_command_line_starts(path: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                       test_guest: object) -> None:
    # (test_guest: the example profiles boot its files; built before, whichever worker runs this first)
    monkeypatch.chdir(path.parent)
    # accel tcg: this machine's /dev/kvm is software-backed, where `-cpu host` (which the driver adds under
    # kvm) aborts QEMU (QEMU-FACTS); the rest of the command line is the same under either.
    if "arch: aarch64" in path.read_text():  # the driver runs only qemu-system-x86_64: export says so, lossy or not
        with pytest.raises(UsageError, match="Nomad's qemu driver runs only qemu-system-x86_64"):
            io.export_target("nomad", str(path), overrides=["machine.accel=tcg"], lossy=True)
        return
    result = io.export_target("nomad", str(path), overrides=["machine.accel=tcg"], lossy=True)
    parsed = _unmeta(hcl2.loads(result["text"],
                                serialization_options=hcl2.SerializationOptions(strip_string_quotes=True)))
    job = next(iter(parsed["job"][0].values()))
    task = next(iter(next(iter(job["group"][0].values()))["task"][0].values()))
    config, resources = task["config"][0], task["resources"][0]
    files = [config["image_path"], *(config["args"][i + 1] for i, a in enumerate(config["args"])
                                     if a in ("-kernel", "-initrd"))]
    missing = [f for f in files if not Path(f).exists()]
    if not config["image_path"] or missing:
        pytest.skip(f"{path.name}: needs {missing or 'a disk'} (scripts/build-test-guest, build-debian-image)")
    qmp = short_tmp / "qmp.sock"
    argv = [*driver_argv(config, resources["memory"], short_tmp), "-S", "-qmp", f"unix:{qmp},server=on,wait=off"]
    run_paused(argv, short_tmp / "qemu.err", qmp)
