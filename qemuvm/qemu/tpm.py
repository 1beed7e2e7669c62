"""machine.tpm: a TPM 2.0 emulated by swtpm, one helper per instance that the supervisor runs before QEMU
(DESIGN.md's helper rules: its socket and log in the instance folder, watched, stopped after QEMU). Pure, like
compile.

QEMU talks to swtpm over its control socket (`-chardev socket` + `-tpmdev emulator`) and passes the data channel
through it. swtpm keeps the TPM's permanent state in `tpm/` of the instance folder (files 0600), which is what
makes sealed secrets last across down/start; its volatile state travels in QEMU's migration stream (save/start,
warm clones). `--terminate`: swtpm ends with QEMU's connection, so a lost supervisor cannot leave it behind.
"""

from __future__ import annotations

from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Profile
from qemuvm.qemu.facts import HostFacts


def argv(paths: InstancePaths, host: HostFacts) -> list[str]:
    assert host.swtpm is not None
    return [host.swtpm, "socket", "--tpm2", "--tpmstate", f"dir={paths.tpm_state},mode=0600",
            "--ctrl", f"type=unixio,path={paths.tpm_socket},mode=0600", "--log", "fd=1,level=1",
            "--pid", f"file={paths.root / 'swtpm.pid'}", "--terminate"]


def helpers(profile: Profile, paths: InstancePaths, host: HostFacts) -> list[dict[str, str | list[str] | None]]:
    """The swtpm of a profile with machine.tpm (the fields of runtime.records.Helper)."""
    if not profile.machine.tpm or host.swtpm is None:
        return []
    return [{"name": "swtpm", "what": "machine.tpm (swtpm)", "argv": argv(paths, host),
             "socket": str(paths.tpm_socket), "log": str(paths.root / "swtpm.log"), "readonly_source": None}]
