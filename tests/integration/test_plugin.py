"""The pytest plugin: `qemuvm.testing.vm()` and the `qemuvm_vm` fixture, on the busybox test guest."""

from __future__ import annotations

import textwrap

import pytest
from helpers import CI_SMOKE, guest_overrides

from qemuvm.runtime import instance
from qemuvm.testing import vm

pytestmark = pytest.mark.integration
pytest_plugins = ["pytester"]


def test_vm_gives_ssh_qmp_serial_wait_and_status(test_guest, qemuvm_home):
    with vm(CI_SMOKE, **{"machine.memory": "384M"}, **guest_overrides(test_guest)) as guest:
        assert guest.name.startswith("ci-smoke-")
        assert "QEMUVM_GUEST_READY" in guest.serial_log  # ready was waited for
        assert guest.status()["state"] == "running"
        assert guest.qmp("query-memory-size-summary")["base-memory"] == 384 * 1024 * 1024  # the override
        assert guest.ssh("cat /mnt/data/marker.txt").stdout == "QEMUVM_DATA_MARKER\n"
        assert guest.wait_serial(r"kernel=(\S+)").group(1) == test_guest.kernel_version
        guest.qmp("stop")
        guest.wait(event="STOP", from_start=True, timeout=30)
        assert guest.qmp("query-status")["status"] == "paused"
        guest.qmp("cont")
        state = instance.read_state(guest.paths)
        pid, started = state.qemu_pid, state.qemu_start_time
    assert instance.process_if_alive(pid, started) is None
    assert not guest.paths.root.exists()


def test_vm_is_torn_down_when_the_test_body_raises(test_guest, qemuvm_home):
    with pytest.raises(RuntimeError, match="test failed"), \
            vm(CI_SMOKE, wait=False, **guest_overrides(test_guest)) as guest:
        state = instance.read_state(guest.paths)
        raise RuntimeError("test failed")
    assert instance.process_if_alive(state.qemu_pid, state.qemu_start_time) is None
    assert not guest.paths.root.exists()


def test_a_vm_that_cannot_be_torn_down_is_an_error_not_a_silent_leak(test_guest, qemuvm_home, monkeypatch,
                                                                      capsys):
    """Teardown failing (here `rm` made to fail) raises -- pytest shows a teardown error -- unless the test body
    raised already: then its own error goes on, and the teardown problem is said on stderr."""
    from qemuvm import api
    from qemuvm.errors import OperationError

    real_rm = api.rm

    def failing_rm(name, **kwargs):
        raise OperationError(f"cannot remove {name} (made to fail)")

    monkeypatch.setattr(api, "rm", failing_rm)
    with pytest.raises(OperationError, match=r"could not be torn down .*made to fail"), \
            vm(CI_SMOKE, wait=False, **guest_overrides(test_guest)) as guest:
        pass
    with pytest.raises(RuntimeError, match="the test's own"), \
            vm(CI_SMOKE, wait=False, **guest_overrides(test_guest)) as other:
        raise RuntimeError("the test's own error")
    assert "could not be torn down" in capsys.readouterr().err
    monkeypatch.setattr(api, "rm", real_rm)
    for left in (guest, other):
        assert left.paths.root.exists()  # what the error said: it is still there
        api.rm(left.name)


def test_the_fixture_from_the_entry_point(pytester, test_guest, qemuvm_home):
    """A test suite that only installed qemuvm: the fixture comes from the pytest11 entry point.

    Its failing test shows the guest's serial console in the report, and its VM is gone afterwards."""
    pytester.makepyfile(test_inner=textwrap.dedent(f"""
        PROFILE = {str(CI_SMOKE)!r}
        OVERRIDES = {guest_overrides(test_guest)!r}

        def test_marker(qemuvm_vm):
            guest = qemuvm_vm(PROFILE, **OVERRIDES)
            assert guest.ssh("cat /mnt/data/marker.txt").stdout == "QEMUVM_DATA_MARKER\\n"

        def test_fails(qemuvm_vm):
            guest = qemuvm_vm(PROFILE, set=["machine.memory=300M"], **OVERRIDES)
            assert guest.ssh("uname -r").stdout.startswith("4.")
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=900)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*qemuvm ci-smoke-*: last serial lines*", "*QEMUVM_GUEST_READY*"])
    assert [p for p in qemuvm_home.iterdir() if not p.name.startswith(".")] == []


def test_vm_honours_the_home_it_is_given(test_guest, qemuvm_home, short_tmp):
    """`vm(home=...)` keeps the instance there, and every call of the VM goes there (not to $QEMUVM_HOME)."""
    elsewhere = short_tmp / "h"
    with vm(CI_SMOKE, home=elsewhere, **guest_overrides(test_guest)) as guest:
        assert guest.paths.root.parent == elsewhere and guest.paths.root.is_dir()
        assert not any(qemuvm_home.iterdir())
        assert guest.status()["state"] == "running"
        assert guest.qmp("query-status")["status"] == "running"
        assert guest.ssh("echo hi").stdout == "hi\n"
        guest.qmp("stop")
        guest.wait(event="STOP", from_start=True, timeout=30)
    assert not guest.paths.root.exists()


def test_a_session_ended_by_sigterm_tears_its_vms_down(pytester, test_guest, qemuvm_home):
    """A CI job's timeout sends SIGTERM: pytest would end without teardown and the fixture's VM run on (issue 30).
    The plugin makes it what Ctrl-C is, so the fixture stops and removes the VM."""
    import signal
    import subprocess
    import sys

    from helpers import poll

    marker = pytester.path / "started"
    pytester.makepyfile(test_inner=textwrap.dedent(f"""
        import pathlib, time

        def test_long(qemuvm_vm):
            qemuvm_vm({str(CI_SMOKE)!r}, wait=False, **{guest_overrides(test_guest)!r})
            pathlib.Path({str(marker)!r}).write_text("up")
            time.sleep(600)  # what the job's timeout cuts short
    """))
    with subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_inner.py"],
                          cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:
        poll("the inner test's VM to be up", marker.exists, 300)
        [folder] = [p for p in qemuvm_home.iterdir() if not p.name.startswith(".")]
        state = instance.read_state(instance.InstancePaths(folder))
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=300)
    assert run.returncode != 0 and "interrupted by SIGTERM" in out, out
    assert instance.process_if_alive(state.qemu_pid, state.qemu_start_time) is None
    assert [p for p in qemuvm_home.iterdir() if not p.name.startswith(".")] == []
