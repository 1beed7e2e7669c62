"""Which start an instance gets (runtime/launch.start_kind), a pure decision, and that each kind has its own
preparation in launch.PREPARE before the one launch-and-wait that every start shares."""

from __future__ import annotations

import pytest

from qemuvm.runtime import launch


@pytest.mark.parametrize(("saved", "template", "kind"), [
    (False, False, "cold"),  # a boot from the profile
    (True, False, "restore"),  # `start` of a saved instance continues it
    (False, True, "clone"),  # up --warm: a new instance from the template's state
    (True, True, "clone"),  # the template wins: a clone is a new instance, never this one's old save
])
def test_start_kind(saved: bool, template: bool, kind: str) -> None:
    assert launch.start_kind(saved=saved, template=template) == kind


def test_every_kind_is_prepared_its_own_way() -> None:
    assert set(launch.PREPARE) == {launch.COLD, launch.RESTORE, launch.CLONE}
    assert len(set(launch.PREPARE.values())) == 3
