"""What the import rules of DESIGN.md promise, proven: the supervisor loads only the runtime layer (and the
stdlib, psutil, qemu.qmp), and compiling a profile touches nothing -- no file written, no process, no socket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "profiles"


def test_the_supervisor_imports_only_the_runtime_layer() -> None:
    probe = ("import json, sys\nimport qemuvm.runtime.supervisor\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('qemuvm', 'pydantic', 'typer', 'yaml', 'rich', 'click', 'pycdlib'))))")
    done = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": ":".join(p for p in sys.path if p)})
    loaded = json.loads(done.stdout)
    outside = [m for m in loaded if not m.startswith("qemuvm.runtime")
               and m not in ("qemuvm", "qemuvm.errors", "qemuvm.files", "qemuvm.paths")]
    assert outside == [], f"the supervisor loads {outside}"
    assert "qemuvm.runtime.prepare" not in loaded and "qemuvm.runtime.cloudinit" not in loaded


def _golden_profiles() -> list[Path]:
    return sorted(p for p in GOLDEN.glob("*.yaml") if not p.name.startswith("err-"))


def test_compile_is_pure_under_an_audit_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every valid golden profile compiles while an audit hook fails any write, process, socket or
    directory change; the profiles are loaded first (loading reads files; compiling must not)."""
    import time

    from qemuvm.paths import InstancePaths
    from qemuvm.profile.validate import load_and_validate
    from qemuvm.qemu.compile import PortPlan, compile_argv
    from qemuvm.qemu.facts import HostFacts

    monkeypatch.chdir(GOLDEN.parent)
    profiles = []
    for path in _golden_profiles():
        try:
            profiles.append(load_and_validate(str(path.relative_to(GOLDEN.parent))))
        except Exception:  # compile-time error goldens (e.g. no OVMF) are not this test's business
            continue
    assert len(profiles) > 40
    seen: list[str] = []
    armed = False

    def hook(event: str, args: tuple) -> None:
        if not armed:
            return
        if event == "open" and len(args) > 1 and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
            seen.append(f"open for writing {args[0]}")
        elif event == "open" and len(args) > 2 and isinstance(args[2], int) and args[2] & 0o3:
            seen.append(f"os.open for writing {args[0]}")
        elif event.startswith(("subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.fork", "socket.",
                               "os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.truncate",
                               "os.symlink", "os.link", "shutil.")):
            seen.append(f"{event} {args[:2]}")

    sys.addaudithook(hook)
    clock_reads: list[str] = []
    for name in ("time", "monotonic", "perf_counter"):
        original = getattr(time, name)
        monkeypatch.setattr(time, name, lambda _o=original, _n=name: (clock_reads.append(_n), _o())[1])
    armed = True
    try:
        for profile in profiles:
            paths = InstancePaths(Path("/run/qemuvm-golden") / profile.name)
            with_ports = PortPlan(vnc_port=5901, forwards={}, ssh_host_port=2222)
            try:
                compile_argv(profile, paths, HostFacts(), with_ports)
                compile_argv(profile, paths, HostFacts(), with_ports, start_paused=True, first_boot=False)
            except Exception as exc:  # a UsageError of compile is fine; the hook is what is tested
                if "Usage" not in type(exc).__name__:
                    raise
    finally:
        armed = False
    assert seen == [] and clock_reads == [], (seen, clock_reads)


def test_compile_imports_nothing_that_touches_the_system() -> None:
    probe = ("import json, sys\nimport qemuvm.qemu.compile\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('qemuvm') or m == 'subprocess')))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                       check=True).stdout)
    allowed = ("qemuvm.profile", "qemuvm.qemu.compile", "qemuvm.qemu.options", "qemuvm.qemu.facts",
               "qemuvm.qemu.shares", "qemuvm.qemu.passt", "qemuvm.qemu.segment", "qemuvm.qemu.natnet",
               "qemuvm.qemu.arch", "qemuvm.qemu.tpm", "qemuvm.paths", "qemuvm.errors", "qemuvm.files")
    assert [m for m in loaded if m not in ("qemuvm", "qemuvm.runtime", "qemuvm.qemu")
            and not m.startswith(allowed)] == []


def test_the_libvirt_converters_are_pure() -> None:
    """convert/libvirt_* (not convert/io.py, their file side) import nothing that touches the system."""
    probe = ("import json, sys, pathlib\n"
             "import qemuvm.convert.libvirt_import as i, qemuvm.convert.libvirt_export as e\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('qemuvm') or m == 'subprocess')))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                       check=True).stdout)
    allowed = ("qemuvm.profile", "qemuvm.convert.libvirt", "qemuvm.convert.xmlwalk", "qemuvm.errors")
    assert [m for m in loaded if m not in ("qemuvm", "qemuvm.convert") and not m.startswith(allowed)] == []


def test_every_import_points_down_and_none_cycles() -> None:
    """DESIGN.md's order (leaf < profile < qemu < runtime < convert < control < api < workflow/testing/top <
    cli), derived from every import in the code, lazy ones included: no module imports a higher layer, the CLI
    imports only the api and the layers it fronts, and no two modules import each other, even lazily."""
    from import_graph import CLI_MAY_ALSO_IMPORT, CLI_MAY_IMPORT, cycles, edges, layer, rank

    graph = edges()
    upward = sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                    if rank(layer(target)) > rank(layer(module))
                    or (layer(target) != layer(module) and rank(layer(target)) == rank(layer(module))))
    assert upward == []
    cli = sorted(f"{module} -> {target}" for module, targets in graph.items() if layer(module) == "cli"
                 for target in targets if layer(target) not in CLI_MAY_IMPORT and target not in CLI_MAY_ALSO_IMPORT)
    assert cli == []
    assert cycles(graph) == []


def test_the_graph_in_architecture_md_is_the_code_s() -> None:
    from import_graph import block, written_block

    assert written_block() == block(), "regenerate with: .venv/bin/python tests/unit/import_graph.py --write"


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in helper modules (helpers.py, paused.py, hostile.py, import_graph.py, ...) or a
    conftest, never in one test module that others import."""
    import ast

    found = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.relative_to(REPO)} imports {name}" for name in names
                      if name.split(".")[-1].startswith("test_")]
    assert found == []


def test_no_test_hook_ships_in_qemuvm() -> None:
    """Fault tests reach the supervisor from outside (its audit events, tests/integration/supervisor_stops.py):
    no QEMUVM_TEST_* switch is read by the package."""
    hooks = [str(path.relative_to(REPO)) for path in (REPO / "qemuvm").rglob("*.py")
             if "QEMUVM_TEST_" in path.read_text()]
    assert hooks == []
