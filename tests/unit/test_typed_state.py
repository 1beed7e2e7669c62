"""Commands read an instance's state through the typed view (`records.StateView`, with `ExitRecord` and
`HelperState` inside), never as a dict: a field renamed or retyped in records.py then breaks where it is used,
not silently at run time (issue 31). The CLI formats the API's JSON-shaped results, and intent.py owns its own
record: both are outside this rule."""

from __future__ import annotations

import ast
from pathlib import Path

import qemuvm
from qemuvm.runtime import records

PACKAGE = Path(qemuvm.__file__).parent
# Fields only state.json has (not the generic "state" or "name" that output rows share).
STATE_ONLY = {field for field in records.StateView.__dataclass_fields__} - {
    "name", "state", "policy", "restarts", "forwards", "vnc", "ssh", "accel", "schema", "updated_at", "uptime_s",
    "supervised", "stale", "unreadable"}
OWNERS = {PACKAGE / "runtime" / "records.py", PACKAGE / "runtime" / "intent.py"}
OUTPUT_ROWS = {"result", "row"}  # what status/top build for JSON output: written from the view, then read


def _string_key_reads(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.slice, ast.Constant):
            if not (isinstance(node.value, ast.Name) and node.value.id in OUTPUT_ROWS):
                key = node.slice.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant):
            key = node.args[0].value
        if key in STATE_ONLY:
            found.append((node.lineno, key))
    return found


def test_no_state_field_is_read_by_its_string_key() -> None:
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: [{key!r}]"
                 for path in sorted(PACKAGE.rglob("*.py")) if path not in OWNERS and "cli" not in path.parts
                 for line, key in _string_key_reads(ast.parse(path.read_text()))]
    assert not offenders, "read these through records.StateView:\n" + "\n".join(offenders)


def test_the_scan_finds_a_string_keyed_read() -> None:
    """The rule above can fail: the same scan flags the dict-style reads this replaced."""
    assert _string_key_reads(ast.parse('state.get("qemu_pid"); (state or {})["last_exit"]["reason"]')) == [
        (1, "qemu_pid"), (1, "last_exit")]
    assert "qemu_pid" in STATE_ONLY and "helpers" in STATE_ONLY
