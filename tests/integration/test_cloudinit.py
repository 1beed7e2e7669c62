"""cloud-init NoCloud seed on the real Debian 12 image: hostname, runcmd and the injected per-instance SSH key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from vmrun import Vm, free_port, profile_from

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_seed_configures_the_debian_image(short_tmp: Path, debian_image) -> None:
    port = free_port()
    profile = profile_from(f"""
machine: {{accel: tcg, memory: 1G, cpus: 2}}
boot: {{kernel: {debian_image.vmlinuz}, initrd: {debian_image.initrd}, cmdline: "{debian_image.cmdline}"}}
disks:
  - {{file: {debian_image.disk}, ephemeral: true}}
cloud_init:
  user_data:
    runcmd:
      - [sh, -c, "echo QEMUVM_RUNCMD_MARKER > /root/runcmd-marker"]
network:
  - mode: user
    forwards: ["tcp:127.0.0.1:{port}-:22"]
""", short_tmp, "citest")
    with Vm(profile, short_tmp / "home") as vm:
        key = vm.paths.ssh_key
        assert key.stat().st_mode & 0o777 == 0o600
        # cloud-init's final stage runs runcmd last: wait until SSH answers and the marker is there.
        deadline = time.monotonic() + 600
        while True:
            result = vm.ssh(key, port, "cat /root/runcmd-marker && hostname", timeout=30)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            assert vm.proc.poll() is None, f"QEMU exited; serial:\n{vm.serial_text()[-3000:]}"
            time.sleep(0.1)
        assert result.returncode == 0, f"{result.stderr}\nserial:\n{vm.serial_text()[-3000:]}"
        assert result.stdout.split() == ["QEMUVM_RUNCMD_MARKER", "citest"]
        # The key went to root (ssh.user) without the "login as the default user" prefix.
        keys = vm.ssh(key, port, "cat /root/.ssh/authorized_keys").stdout
        assert Path(f"{key}.pub").read_text().split()[1] in keys
