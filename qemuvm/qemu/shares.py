"""Host folders in the guest: which file system each share uses, virtiofsd's command line, and how a guest
mounts it. Pure, like compile: the argv, the supervisor's helper records and the cloud-init seed all come
from here, so they cannot disagree.

virtiofs: one virtiofsd per share (a helper the supervisor runs, its socket in the instance folder) and guest
RAM in a shared memfd, which vhost-user needs. 9p: QEMU serves the folder itself, any user can run it.
"""

from __future__ import annotations

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Profile, Share
from qemuvm.qemu.facts import HostFacts

VIRTIOFS, NINEP = "virtiofs", "9p"


def virtiofs_problem(host: HostFacts) -> str | None:
    """Why this host cannot run virtiofsd for us, or None."""
    if not host.virtiofsd:
        return "virtiofsd is not installed (Debian: apt-get install qemu-system-common)"
    if not host.root:
        return "virtiofsd runs as root only (Debian 12's virtiofsd)"
    return None


def kind(share: Share, host: HostFacts) -> str:
    """virtiofs or 9p: `type`, with auto resolved for this host."""
    if share.type != "auto":
        return share.type
    return VIRTIOFS if virtiofs_problem(host) is None else NINEP


def label(index: int, share: Share) -> str:
    return f"shares[{index}] (tag {share.tag})"


def check(profile: Profile, host: HostFacts) -> None:
    """A share that asks for virtiofs where it cannot run: one sentence naming it and the way out."""
    problem = virtiofs_problem(host)
    for index, share in enumerate(profile.shares):
        if share.type == VIRTIOFS and problem:
            raise UsageError(f"shares[{index}].type: virtiofs for tag {share.tag} cannot run here: {problem}; use "
                             "type: 9p (or auto), or run qemuvm as root")


def any_virtiofs(profile: Profile, host: HostFacts) -> bool:
    return any(kind(share, host) == VIRTIOFS for share in profile.shares)


def resolved(profile: Profile, host: HostFacts) -> tuple[Profile, list[str]]:
    """The profile with every `type: auto` made concrete for this host, and a notice for each one resolved
    (up says it once; profile.yaml then records the choice, so restarts and adoption keep it)."""
    notes: list[str] = []
    shares = []
    for index, share in enumerate(profile.shares):
        if share.type == "auto":
            chosen = kind(share, host)
            why = "virtiofsd runs here" if chosen == VIRTIOFS else virtiofs_problem(host)
            notes.append(f"{label(index, share)}: type auto is {chosen} ({why})")
            share = share.model_copy(update={"type": chosen})
        shares.append(share)
    if not notes:
        return profile, notes
    return profile.model_copy(update={"shares": shares}), notes


def socket(paths: InstancePaths, index: int) -> str:
    # Shorter than supervisor.sock, so the instance folder's socket-length check covers it.
    return str(paths.root / f"virtiofs{index}.sock")


def log(paths: InstancePaths, index: int) -> str:
    return str(paths.root / f"virtiofs{index}.log")


def virtiofsd_argv(share: Share, index: int, paths: InstancePaths, host: HostFacts) -> list[str]:
    """virtiofsd in the foreground, logging to stderr (the supervisor sends that to virtiofsN.log). Its own
    namespace sandbox pivots into the folder, so the guest cannot reach beyond it."""
    assert host.virtiofsd is not None
    return [host.virtiofsd, f"--socket-path={socket(paths, index)}", "-o", f"source={share.source}",
            "-o", f"cache={share.cache}", "-o", "sandbox=namespace"]


def helpers(profile: Profile, paths: InstancePaths, host: HostFacts) -> list[dict[str, str | list[str] | None]]:
    """The supervisor's helpers for this profile, a virtiofsd per virtiofs share in share order: the fields of
    runtime.records.Helper (plain data here: compile's layer writes no records)."""
    return [{"name": f"virtiofs{index}", "what": label(index, share), "argv": virtiofsd_argv(share, index, paths, host),
             "socket": socket(paths, index), "log": log(paths, index),
             "readonly_source": share.source if share.readonly else None}
            for index, share in enumerate(profile.shares) if kind(share, host) == VIRTIOFS]


def mount_options(share: Share, chosen: str) -> str:
    """The guest's mount options (fstab / mount -o)."""
    options = ["trans=virtio", "version=9p2000.L", f"cache={'loose' if share.cache == 'always' else 'none'}"] \
        if chosen == NINEP else []
    if share.readonly:
        options.append("ro")
    return ",".join(options) or "defaults"


def kernel_params(profile: Profile, host: HostFacts) -> list[str]:
    """qemuvm.share=TYPE:TAG:PATH:OPTIONS for each share with `mount` (a direct-boot kernel's command line;
    the kernel ignores them, the test guest's init mounts them)."""
    return [f"qemuvm.share={kind(share, host)}:{share.tag}:{share.mount}:{mount_options(share, kind(share, host))}"
            for share in profile.shares if share.mount]


def cloud_init_mounts(profile: Profile, host: HostFacts) -> list[list[str]]:
    """cloud-init `mounts` entries (fstab fields) for each share with `mount`; nofail: a guest without the
    file system still boots."""
    return [[share.tag, share.mount, kind(share, host), mount_options(share, kind(share, host)) + ",nofail", "0", "0"]
            for share in profile.shares if share.mount]
