"""Side effects compile must not have: disks, overlays, the cloud-init seed, UEFI variables, keys.

(Interface stub: the implementation lands with issue 5.)
"""

from __future__ import annotations

from qemuvm.profile.model import Profile
from qemuvm.qemu.host import HostFacts
from qemuvm.runtime.paths import InstancePaths


def prepare(profile: Profile, paths: InstancePaths, host: HostFacts) -> None:
    """Make every file the compiled argv refers to exist. Idempotent across restarts of one instance."""
