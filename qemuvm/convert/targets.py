"""What the exports to schedulers (KubeVirt, Kubernetes Jobs, Nomad) share: which profile fields the user set,
and the honest-mapping rule -- a field that is set and that the target cannot express is an error naming the
field and the target, unless the caller accepts the loss (--lossy), which lists what was dropped."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from qemuvm.errors import UsageError
from qemuvm.profile.model import ARCH_DEFAULTS, Profile


def is_set(model: BaseModel, dotted: str) -> bool:
    """Whether the user set `dotted` (e.g. "display.vnc.port") rather than leaving the default."""
    node: Any = model
    for part in dotted.split("."):
        if not isinstance(node, BaseModel) or part not in node.model_fields_set:
            return False
        node = getattr(node, part)
    return True


@dataclass
class Mapping:
    """One export in progress: what was dropped (errors unless lossy) and what was changed (notes)."""

    target: str
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def drop(self, where: str, why: str) -> None:
        self.dropped.append(f"{where}: {why}")

    def note(self, where: str, why: str) -> None:
        self.notes.append(f"{where}: {why}")

    def check(self, lossy: bool) -> None:
        if self.dropped and not lossy:
            more = f" (and {len(self.dropped) - 1} more)" if len(self.dropped) > 1 else ""
            raise UsageError(f"{self.target} cannot express {self.dropped[0]}{more}; --lossy exports without "
                             "it and lists what was dropped")


def k8s_name(name: str, mapping: Mapping) -> str:
    """A DNS-1123 name, as Kubernetes objects need (lowercase letters, digits, '-')."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:63] or "vm"
    if cleaned != name:
        mapping.note("name", f"{name} becomes {cleaned} (Kubernetes names are lowercase DNS labels)")
    return cleaned


def quantity(mib: int) -> str:
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def user_forwards(profile: Profile) -> list[tuple[int, int, Any]]:
    """(nic index, forward index, forward) of the user/passt NICs: the guest ports a target can publish."""
    return [(n, f, forward) for n, nic in enumerate(profile.network) if nic.mode in ("user", "passt")
            for f, forward in enumerate(nic.forwards)]


def common_drops(profile: Profile, mapping: Mapping, *, shares: bool = True, mem_merge: bool = True) -> None:
    """What no scheduler target expresses."""
    if shares:
        for index, share in enumerate(profile.shares):
            mapping.drop(f"shares[{index}]", f"a host folder ({share.source}) has no counterpart on "
                         f"{mapping.target}")
    if profile.qemu.extra_args:
        mapping.drop("qemu.extra_args", f"{mapping.target} builds the QEMU command line itself")
    if is_set(profile, "qemu.binary") and profile.qemu.binary != ARCH_DEFAULTS[profile.machine.arch]["binary"]:
        mapping.drop("qemu.binary", f"{mapping.target} runs its own QEMU")
    if mem_merge and is_set(profile, "machine.mem_merge") and not profile.machine.mem_merge:
        mapping.drop("machine.mem_merge", "KSM is a host setting there")
    if profile.boot.once:
        mapping.drop("boot.once", "one-time boot devices are not part of its VM definition")
