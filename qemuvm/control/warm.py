"""`up --warm`: start a profile as a clone of its template, making the template first when there is none.

The first run boots the instance cold to `ready`, saves it (control/save.py), freezes the saved state and
overlays into a template (runtime/template.py) and starts the same instance again as its first clone; every
later run of the same fingerprint starts a clone at once. Building holds the template's lock, so parallel
runs of one profile (pytest -n) build it once and the others wait, then clone.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemuvm.errors import OperationError, UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance, launch, template

if TYPE_CHECKING:
    from qemuvm.profile.model import Profile
    from qemuvm.qemu.facts import HostFacts
    from qemuvm.runtime import spawn

BUILD_MARGIN = 300.0  # seconds beyond the ready timeout that a parallel run waits for a template being built


def start_warm(profile: Profile, paths: InstancePaths, host: HostFacts, *, home: Path | None,
               remove_on_down: bool, timeout: float | None, progress: Callable[[str], None],
               source: str | None = None, prestart: spawn.Prestart | None = None) -> tuple[int, dict[str, Any]]:
    """Start `paths` as a clone; returns its serial offset and what `up` reports about the template."""
    problem = template.warm_problem(profile)
    if problem:
        raise UsageError(f"--warm cannot start {profile.name}: {problem}; start it without --warm")
    if paths.state.exists() or paths.profile.exists():
        raise UsageError(f"instance {profile.name} exists, and --warm starts a new clone: `qemuvm rm {profile.name}` "
                         "first, or use `up --rm --warm` (removed at down)")
    key, inputs = template.fingerprint(profile, host)
    home_dir = paths.root.parent
    ready_timeout = timeout if timeout is not None else profile.ready.timeout if profile.ready else 120.0
    with template.build_lock(home_dir, key, timeout=ready_timeout + BUILD_MARGIN):
        found = template.find(home_dir, key)
        built = found is None
        if found is None:
            progress(f"no template of {profile.name} yet: booting it once to ready, then saving template {key} …")
            found = _build(profile, paths, host, home, key, inputs, source, ready_timeout, progress, prestart)
        folder, record = found
        serial_offset, _ = launch.start_instance(
            template.clone_profile(profile, record), paths, host, home=home, remove_on_down=remove_on_down,
            progress=progress, template=found, prestart=prestart)
        hits = template.count_hit(folder)
    return serial_offset, {"fingerprint": key, "folder": str(folder), "built": built, "hits": hits,
                           "cold_ready_after_s": record.ready_after_s}


def _build(profile: Profile, paths: InstancePaths, host: HostFacts, home: Path | None, key: str,
           inputs: list[Any], source: str | None, ready_timeout: float, progress: Callable[[str], None],
           prestart: spawn.Prestart | None) -> tuple[Path, Any]:
    """Boot `paths` cold to ready, save it and freeze it into template `key`. Any failure removes the
    instance and the half-made template: nothing is left but the error."""
    from qemuvm.control import save, stop
    from qemuvm.control.wait import wait_ready

    serial_offset, _ = launch.start_instance(profile, paths, host, home=home, remove_on_down=False,
                                             progress=progress, prestart=prestart)
    try:
        ready_after = wait_ready(paths, profile.ready, True, ready_timeout, serial_offset, progress)
        progress(f"{profile.name} was ready after {ready_after or 0:.1f} s: saving it as template {key} …")
        state = instance.read_state(paths)
        if instance.proven_qemu(state) is None:
            raise OperationError(f"{profile.name} stopped before its template was saved; see {paths.qemu_log}")
        assert state is not None  # proven_qemu found its QEMU in it
        save.save(paths, state)
        return template.freeze(paths, profile, key, inputs, ready_after, source=source)
    except BaseException:
        with contextlib.suppress(Exception):
            stop.kill(profile.name, paths)
        shutil.rmtree(paths.root, ignore_errors=True)
        raise
