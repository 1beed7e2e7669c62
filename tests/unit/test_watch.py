"""Waits that wake at the write, not at the next poll: the folder watch (inotify) and the serial condition's
incremental search."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from qemuvm.control import wait
from qemuvm.paths import InstancePaths
from qemuvm.runtime.watch import FolderWatch


def test_a_write_by_another_process_wakes_the_watch(tmp_path: Path) -> None:
    with FolderWatch(tmp_path) as watch:
        assert watch.fd is not None  # inotify works on this kind of machine
        assert watch.wait(0.01) is False  # nothing changed
        subprocess.run([sys.executable, "-c", f"open({str(tmp_path / 'serial.log')!r}, 'a').write('x')"], check=True)
        assert watch.wait(30) is True  # the write, long before the timeout
        assert watch.wait(0.01) is False  # drained: one wake-up for what happened so far


def test_a_rename_into_place_wakes_the_watch(tmp_path: Path) -> None:
    (tmp_path / ".state.json.tmp").write_text("{}")
    with FolderWatch(tmp_path) as watch:
        os.replace(tmp_path / ".state.json.tmp", tmp_path / "state.json")  # how records are written
        assert watch.wait(30) is True


def test_without_a_folder_the_watch_is_a_sleep(tmp_path: Path) -> None:
    with FolderWatch(tmp_path / "missing") as watch:
        assert watch.fd is None and watch.wait(0.01) is False


def _append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def test_the_serial_condition_finds_a_match_split_across_writes(tmp_path: Path) -> None:
    paths = InstancePaths(tmp_path)
    paths.serial_log.write_text("")
    condition = wait.serial_condition(paths, r"login:\s*$", offset=0)
    assert condition.check() is False
    _append(paths.serial_log, "x" * (3 * wait.LOOKBACK) + "\nlog")
    assert condition.check() is False
    assert condition.check() is False  # nothing new: not searched again
    _append(paths.serial_log, "in: ")
    assert condition.check() is True


def test_the_serial_condition_spans_lines_within_its_lookback(tmp_path: Path) -> None:
    paths = InstancePaths(tmp_path)
    paths.serial_log.write_text("")
    condition = wait.serial_condition(paths, r"^first$\n^second$", offset=0)
    _append(paths.serial_log, "boot\nfirst\n")
    assert condition.check() is False
    _append(paths.serial_log, "second\n")
    assert condition.check() is True


def test_a_pattern_that_matches_nothing_yet_matches_once(tmp_path: Path) -> None:
    paths = InstancePaths(tmp_path)
    condition = wait.serial_condition(paths, r"^", offset=0)  # no serial.log at all yet
    assert condition.check() is True
