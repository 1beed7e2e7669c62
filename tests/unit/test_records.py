"""The LaunchSpec record (supervisor.json): round trip, defaults in one place, versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qemuvm.errors import UsageError
from qemuvm.runtime import records
from qemuvm.runtime.paths import InstancePaths


@pytest.fixture
def paths(short_tmp: Path) -> InstancePaths:
    found = InstancePaths(short_tmp / "vm")
    found.root.mkdir()
    return found


def test_round_trip_and_defaults(paths: InstancePaths) -> None:
    spec = records.LaunchSpec(name="vm", argv=["qemu-system-x86_64", "-S"], restart=records.Restart("always", 3, 2.0))
    records.write_launch_spec(paths, spec)
    assert records.read_launch_spec(paths) == spec
    assert json.loads(paths.supervisor_config.read_text())["schema"] == records.LAUNCH_SPEC_SCHEMA
    assert records.read_launch_spec(InstancePaths(paths.root.parent / "none")) is None


def test_an_unversioned_record_reads_as_schema_1(paths: InstancePaths) -> None:
    paths.supervisor_config.write_text(json.dumps({"name": "vm", "argv": ["q"], "restart": {"policy": "never"},
                                                   "old_field_gone": 1}))
    spec = records.read_launch_spec(paths)
    assert spec is not None and spec.restart.max_retries == 5 and spec.shutdown_timeout == 60.0


def test_newer_and_broken_records_are_one_sentence(paths: InstancePaths) -> None:
    paths.supervisor_config.write_text(json.dumps({"schema": 99, "name": "vm", "argv": []}))
    with pytest.raises(UsageError, match=r"started by a newer qemuvm .*schema 99"):
        records.read_launch_spec(paths)
    paths.supervisor_config.write_text(json.dumps({"name": "vm"}))
    with pytest.raises(UsageError, match="incomplete"):
        records.read_launch_spec(paths)
    paths.supervisor_config.write_text("{trunc")
    with pytest.raises(UsageError, match="unreadable"):
        records.read_launch_spec(paths)
