"""Typed, versioned records between processes: the LaunchSpec (`supervisor.json`, what `up` decided; written
once per start by `up`, read by the supervisor and by commands). One reader and one writer; every default
lives here. Imported by the supervisor: stdlib only.

Versions: schema 1 is the first typed one. A folder whose record has no `schema` was written by qemuvm before
records were versioned; it has the same fields and reads as schema 1. A newer schema is refused with one
sentence: an older qemuvm must never act on a record it does not understand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from qemuvm.errors import UsageError
from qemuvm.runtime import instance
from qemuvm.runtime.paths import InstancePaths

LAUNCH_SPEC_SCHEMA = 1


@dataclass(frozen=True)
class Restart:
    policy: str = "never"  # never | on-failure | always
    max_retries: int = 5
    backoff: float = 1.0  # seconds before the first restart; doubles, capped (runtime/decisions.py)


@dataclass(frozen=True)
class LaunchSpec:
    """What `up` decided for this start of an instance."""

    name: str
    argv: list[str]  # QEMU's command line as the supervisor runs it (with -S: paused until its monitor listens)
    restart: Restart = field(default_factory=Restart)
    shutdown_timeout: float = 60.0  # how long `down` waits for the ACPI power-off before forcing
    forwards: list[dict[str, Any]] = field(default_factory=list)  # host ports, as state.json shows them
    vnc: dict[str, Any] | None = None
    vnc_password_file: str | None = None  # applied over QMP before `cont`
    ssh: dict[str, Any] = field(default_factory=lambda: {"user": "root", "port": 22})
    remove_on_down: bool = False  # `up --rm`
    serial_log_max: int = 16 << 20  # serial.log is rotated past this (bytes)
    schema: int = LAUNCH_SPEC_SCHEMA


def write_launch_spec(paths: InstancePaths, spec: LaunchSpec) -> None:
    instance.write_json_atomic(paths.supervisor_config, dataclasses.asdict(spec))


def read_launch_spec(paths: InstancePaths) -> LaunchSpec | None:
    """The instance's LaunchSpec; None when there is none. A newer or malformed one: UsageError."""
    data = instance.read_json(paths.supervisor_config)
    if data is None:
        if paths.supervisor_config.exists():
            raise UsageError(f"{paths.supervisor_config} is unreadable; `qemuvm up` of the profile writes it anew")
        return None
    schema = data.get("schema", 1)
    if not isinstance(schema, int) or schema > LAUNCH_SPEC_SCHEMA:
        raise UsageError(f"{paths.name} was started by a newer qemuvm ({paths.supervisor_config.name} schema "
                         f"{schema}; this qemuvm reads up to {LAUNCH_SPEC_SCHEMA}): use that qemuvm")
    known = {f.name for f in dataclasses.fields(LaunchSpec)}
    values = {k: v for k, v in data.items() if k in known}
    try:
        values["restart"] = Restart(**{k: v for k, v in (data.get("restart") or {}).items()
                                       if k in {f.name for f in dataclasses.fields(Restart)}})
        spec = LaunchSpec(**{**values, "schema": LAUNCH_SPEC_SCHEMA})
    except TypeError as exc:  # a required field missing
        raise UsageError(f"{paths.supervisor_config} is incomplete ({exc}); `qemuvm up` writes it anew") from None
    if not isinstance(spec.argv, list) or not all(isinstance(a, str) for a in spec.argv):
        raise UsageError(f"{paths.supervisor_config}: argv is not a list of strings")
    return spec
