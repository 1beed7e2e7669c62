"""No input may produce a traceback: random YAML and random mutations of the example profiles either
validate or fail with `FILE:LINE: field.path: message` lines (exit 2 at the CLI)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qemuvm.errors import UsageError
from qemuvm.profile.model import Profile
from qemuvm.profile.validate import load_and_validate

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "profiles").glob("*.yaml"))
PROBLEM = re.compile(r"^\S+\.yaml(:\d+)?: \S.*: .+$")

FIELD_NAMES = sorted({
    name for model in [Profile, *[f.annotation for f in Profile.model_fields.values()]]
    for name in getattr(model, "model_fields", {})
} | {"file", "size", "mode", "forwards", "vnc", "port", "listen", "kernel", "memory", "extends"})

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False),
    st.text(max_size=20), st.sampled_from(["512M", "2G", "1Q", "auto", "unix", "tcp:127.0.0.1:2222-:22", "-m",
                                           "q35", "microvm", "uefi", "kvm", "tcg", "cdrom", "virtio", "30s"]),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(min_size=1, max_size=8))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


def check(path: Path) -> None:
    try:
        load_and_validate(str(path))
    except UsageError as exc:
        for line in str(exc).splitlines():
            assert PROBLEM.match(line), f"not FILE:LINE: field: message -> {line!r}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents)
def test_random_documents(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    check(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_random_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check(path)


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, (*prefix, index))
    return found


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_examples(tmp_path: Path, data: st.DataObject) -> None:
    example = data.draw(st.sampled_from(EXAMPLES))
    document = yaml.safe_load(example.read_text())
    document.pop("extends", None)
    mutated = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(_paths(mutated)[1:]))
        parent = mutated
        for part in target[:-1]:
            parent = parent[part]
        action = data.draw(st.sampled_from(["replace", "delete", "rename"]))
        if action == "replace":
            parent[target[-1]] = data.draw(documents)
        elif action == "delete":
            del parent[target[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(keys)] = parent.pop(target[-1])
    path = tmp_path / example.name
    path.write_text(yaml.safe_dump(mutated))
    check(path)
