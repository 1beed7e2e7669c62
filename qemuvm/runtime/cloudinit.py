"""The cloud-init NoCloud seed: an ISO 9660 image labelled `cidata`, built with pycdlib.

Files: `user-data`, `meta-data`, and `network-config` when the profile sets one (without it,
cloud-init falls back to DHCP on the first NIC, which is what a missing file means to it).

SSH key injection: when `ssh.identity` is unset, the instance gets its own ed25519 key pair
(`paths.ssh_key`, 0600) and its public key is added to the user data:
- `#cloud-config` (an inline mapping or a file): merged into `ssh_authorized_keys`; for `ssh.user: root`,
  `disable_root: false` is set too unless the profile says otherwise (cloud-init gives root the keys,
  but with a "login as the default user" prefix while disable_root is true);
- any other user data (a `#!` script, `#include`, `#cloud-boothook`, ...): kept byte for byte as one
  part of a MIME multipart document, next to a small `#cloud-config` part that carries the key;
  an input that is already MIME multipart gets that part appended.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import yaml

from qemuvm import files
from qemuvm.errors import OperationError, UsageError
from qemuvm.paths import InstancePaths
from qemuvm.profile.model import CloudInit, Profile
from qemuvm.qemu import shares
from qemuvm.qemu.facts import HostFacts
from qemuvm.runtime import instance

CLOUD_CONFIG = "#cloud-config"
LABEL = "cidata"
# cloud-init's "start line" -> MIME type table (cloudinit/handlers/__init__.py INCLUSION_TYPES_MAP).
_START_LINES = {
    "#!": "text/x-shellscript",
    "#include": "text/x-include-url",
    "#include-once": "text/x-include-once-url",
    "#cloud-config-archive": "text/cloud-config-archive",
    "#cloud-config-jsonp": "text/cloud-config-jsonp",
    "#cloud-boothook": "text/cloud-boothook",
    "#part-handler": "text/part-handler",
    "## template: jinja": "text/jinja2",
}


# -- keys ----------------------------------------------------------------------------------------


def ensure_ssh_key(paths: InstancePaths) -> Path:
    """The instance's own key pair (`id_ed25519` + `.pub`, 0600), generated once and kept across starts."""
    key = paths.ssh_key
    pub = key.with_name(key.name + ".pub")
    if key.exists() and pub.exists():
        return key
    # Generate under a temporary name and rename: a crash never leaves half a key pair behind.
    with tempfile.TemporaryDirectory(prefix=".keygen", dir=paths.root) as scratch:
        tmp = Path(scratch) / "key"
        proc = subprocess.run(
            ["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-C", f"qemuvm@{paths.name}", "-f", str(tmp)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
        )
        if proc.returncode != 0:
            raise OperationError(f"ssh-keygen failed: {proc.stderr.strip() or proc.returncode}")
        os.chmod(tmp, 0o600)
        os.chmod(tmp.with_name("key.pub"), 0o600)
        os.replace(tmp.with_name("key.pub"), pub)
        os.replace(tmp, key)
    return key


def public_key(paths: InstancePaths) -> str:
    return paths.ssh_key.with_name(paths.ssh_key.name + ".pub").read_text().strip()


# -- documents -----------------------------------------------------------------------------------


MAX_DOCUMENT_BYTES = 4 * files.MIB  # a seed ISO holds more, but no real user-data comes near this


def _read(path: str, field: str) -> str:
    return files.read_text(path, f"cloud_init.{field}", MAX_DOCUMENT_BYTES)


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, width=1 << 16)


def _cloud_config(data: dict[str, Any]) -> str:
    return f"{CLOUD_CONFIG}\n{_dump(data)}"


def _with_ours(config: dict[str, Any], key: str | None, user: str, mounts: list[list[str]]) -> dict[str, Any]:
    """The user's config plus what qemuvm adds: the instance key, and the shares' `mounts` entries (after the
    user's own, and not for a mount point the user already lists)."""
    merged = dict(config)
    if key is not None:
        keys = list(merged.get("ssh_authorized_keys") or [])
        if key not in keys:
            keys.append(key)
        merged["ssh_authorized_keys"] = keys
        if user == "root":
            merged.setdefault("disable_root", False)
    if mounts:
        theirs = [entry for entry in merged.get("mounts") or [] if isinstance(entry, list)]
        taken = {entry[1] for entry in theirs if len(entry) > 1}
        merged["mounts"] = [*(merged.get("mounts") or []), *(m for m in mounts if m[1] not in taken)]
    return merged


def _mime_type(text: str) -> str:
    for start, mime in sorted(_START_LINES.items(), key=lambda item: -len(item[0])):
        if text.startswith(start):
            return mime
    return "text/plain"


def _multipart(original: str, key_part: str) -> str:
    if original.lower().startswith("content-type:"):
        import email

        message = email.message_from_string(original)
        if message.is_multipart():
            message.attach(MIMEText(key_part, "cloud-config"))
            return message.as_string()
    message = MIMEMultipart()
    kind = _mime_type(original).split("/", 1)[1]
    message.attach(MIMEText(original, kind))
    message.attach(MIMEText(key_part, "cloud-config"))
    return message.as_string()


def user_data(spec: CloudInit, key: str | None, user: str, mounts: list[list[str]] | None = None) -> str:
    """The user-data document, with `key` and the shares' `mounts` entries injected when given (see the module
    docstring)."""
    mounts = mounts or []
    source = spec.user_data
    if isinstance(source, dict):
        return _cloud_config(_with_ours(source, key, user, mounts))
    if source is None:
        return _cloud_config(_with_ours({}, key, user, mounts))
    text = _read(source, "user_data")
    if key is None and not mounts:
        return text
    if text.startswith(CLOUD_CONFIG + "\n") or text.strip() == CLOUD_CONFIG:
        try:
            config = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"cloud_init.user_data: {source} is not valid YAML ({exc})") from None
        if not isinstance(config, dict):
            raise UsageError(f"cloud_init.user_data: {source} is #cloud-config but not a mapping")
        return _cloud_config(_with_ours(config, key, user, mounts))
    return _multipart(text, _cloud_config(_with_ours({}, key, user, mounts)))


def meta_data(spec: CloudInit, name: str) -> str:
    """Profile meta-data over the defaults instance-id = local-hostname = the instance name."""
    return _dump({"instance-id": name, "local-hostname": name, **(spec.meta_data or {})})


def network_config(spec: CloudInit) -> str | None:
    source = spec.network_config
    if source is None:
        return None
    if isinstance(source, dict):
        return _dump(source)
    return _read(source, "network_config")


# -- the ISO -------------------------------------------------------------------------------------


def seed_files(profile: Profile, paths: InstancePaths) -> dict[str, bytes]:
    """The seed's files by name. Generates the instance key first when `ssh.identity` is unset."""
    spec = profile.cloud_init
    assert spec is not None
    key = None
    if profile.ssh.identity is None:
        ensure_ssh_key(paths)
        key = public_key(paths)
    files = {
        # The profile's share types are concrete by now (launch resolves auto before prepare).
        "user-data": user_data(spec, key, profile.ssh.user, shares.cloud_init_mounts(profile, HostFacts())),
        "meta-data": meta_data(spec, profile.name),
    }
    network = network_config(spec)
    if network is not None:
        files["network-config"] = network
    return {name: text.encode() for name, text in files.items()}


def write_iso(files: dict[str, bytes], target: Path, label: str = LABEL) -> None:
    """An ISO 9660 image (Joliet + Rock Ridge for the long names), written atomically."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    for name, data in files.items():
        # Plain ISO 9660 names are upper case 8.3 (USERDATA.;1); the real names live in Joliet and Rock Ridge.
        iso_name = "/" + re.sub(r"[^A-Z0-9_]", "", name.upper())[:8] + ".;1"
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
    image = io.BytesIO()  # a seed is a few hundred KiB: build it in memory, then one atomic write
    try:
        iso.write_fp(image)
    finally:
        iso.close()
    instance.write_private_atomic(target, image.getvalue())


def write_seed(profile: Profile, paths: InstancePaths) -> Path:
    """Build `paths.seed_iso` from the profile (rewritten on every start: the profile may have changed)."""
    write_iso(seed_files(profile, paths), paths.seed_iso)
    return paths.seed_iso
