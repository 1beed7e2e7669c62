"""Load a profile: YAML with source positions, `extends:` chains, `--set` overrides, relative paths.

The result is plain data (dicts, lists, scalars) plus a map from each field path to where it was
written, so validation errors can say `FILE:LINE: field.path: message`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qemuvm import files
from qemuvm.errors import ProfileError, UsageError

FieldPath = tuple[str | int, ...]

# Fields holding a host path; a relative value is resolved against the folder of the file that
# wrote it (`*` matches any list index).
PATH_FIELDS: tuple[FieldPath, ...] = (
    ("boot", "kernel"),
    ("boot", "initrd"),
    ("disks", "*", "file"),
    ("cloud_init", "user_data"),
    ("cloud_init", "network_config"),
    ("shares", "*", "source"),
    ("display", "vnc", "password_file"),
    ("machine", "uefi_vars"),
    ("ssh", "identity"),
)


@dataclass(frozen=True)
class Location:
    """Where a value was written: a file and line, or a command-line override."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class LoadedProfile:
    """Merged profile data before validation, with the origin of every field."""

    data: dict[str, Any]
    source: Path
    locations: dict[FieldPath, Location] = field(default_factory=dict)
    files: tuple[Path, ...] = ()  # every file read: the profile, then its extends chain (resolved)

    def locate(self, path: FieldPath) -> Location:
        """The location of `path`, or of its closest written ancestor."""
        for end in range(len(path), -1, -1):
            found = self.locations.get(tuple(path[:end]))
            if found:
                return found
        return Location(str(self.source))


def format_path(path: FieldPath) -> str:
    """`("disks", 0, "file")` -> `disks[0].file`."""
    text = ""
    for part in path:
        if isinstance(part, int) or not re.fullmatch(r"[A-Za-z0-9_-]+", part):
            text += f"[{part!r}]"
        else:
            text += f".{part}" if text else part
    return text or "(profile)"


def _display_name(path: Path) -> str:
    """Paths in messages: relative to the working folder when below it, as users typed them."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> tuple[Any, dict[FieldPath, Location]]:
    """Parse one file, recording the line of every mapping key and list item."""
    shown = _display_name(path)
    if not path.exists() and not path.is_symlink():
        raise UsageError(f"{shown}: profile not found")
    return _parse_yaml(files.read_text(path, "profile", MAX_PROFILE_BYTES), shown)


# Bounds on what one profile may be: far beyond any real one, far below what exhausts a machine.
MAX_PROFILE_BYTES = files.MIB
MAX_VALUES = 20_000  # values after alias expansion (a "billion laughs" document is refused before it is built)
MAX_DEPTH = 64


def _expanded_size(root: yaml.Node, shown: str) -> None:
    """Refuse a document whose aliases expand past MAX_VALUES values, nest past MAX_DEPTH, or refer to
    themselves: the node graph is walked once, each node's expanded size memoised."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ProfileError([f"{Location(shown, node.start_mark.line + 1)}: (profile): a YAML alias refers "
                                "to itself (a recursive structure cannot be a profile value)"])
        if depth > MAX_DEPTH:
            raise ProfileError([f"{Location(shown, node.start_mark.line + 1)}: (profile): nested more than "
                                f"{MAX_DEPTH} levels deep"])
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, depth + 1) for item in node.value)
        active.discard(key)
        if total > MAX_VALUES:
            raise ProfileError([f"{Location(shown, node.start_mark.line + 1)}: (profile): expands to more than "
                                f"{MAX_VALUES} values (YAML aliases repeat what they name); write it out plainly"])
        sizes[key] = total
        return total

    size(root, 0)


def _parse_yaml(text: str, shown: str) -> tuple[Any, dict[FieldPath, Location]]:
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is not None:
            _expanded_size(node, shown)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ProfileError([f"{Location(shown, line)}: (profile): YAML syntax error: {problem}"]) from None
    except yaml.YAMLError as exc:
        # ReaderError (a control character in the file) and kin: keep the first line of the reason.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProfileError([f"{shown}: (profile): YAML syntax error: {reason}"]) from None
    except RecursionError:
        raise ProfileError([f"{shown}: (profile): YAML is nested too deeply"]) from None
    except ValueError as exc:  # an integer longer than Python converts (4300 digits), and kin
        reason = "an integer has more than 4300 digits" if "4300" in str(exc) else str(exc)
        raise ProfileError([f"{shown}: (profile): a value cannot be read: {reason}"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    locations: dict[FieldPath, Location] = {}
    problems: list[str] = []
    if node is not None:
        locations[()] = Location(shown, node.start_mark.line + 1)
        _record(node, (), shown, locations, problems, depth=0)
    if problems:
        raise ProfileError(problems)
    return data, locations


def _record(
    node: yaml.Node,
    path: FieldPath,
    file: str,
    out: dict[FieldPath, Location],
    problems: list[str],
    depth: int,
) -> None:
    if depth > 50:  # aliases can make the node graph deep or cyclic; profiles are shallow
        return
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            where = Location(file, key_node.start_mark.line + 1)
            if key in seen:
                problems.append(f"{where}: {format_path((*path, key))}: duplicate key")
            seen.add(key)
            out[(*path, key)] = where
            _record(value_node, (*path, key), file, out, problems, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out[(*path, index)] = Location(file, item.start_mark.line + 1)
            _record(item, (*path, index), file, out, problems, depth + 1)


def _merge(
    base: dict[str, Any],
    base_locs: dict[FieldPath, Location],
    over: dict[str, Any],
    over_locs: dict[FieldPath, Location],
    path: FieldPath = (),
) -> dict[str, Any]:
    """Mappings merge key by key; lists and scalars replace (PROFILE.md)."""
    merged = dict(base)
    for key, value in over.items():
        key_path = (*path, key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], base_locs, value, over_locs, key_path)
            if key_path in over_locs:
                base_locs[key_path] = over_locs[key_path]
            continue
        # The whole subtree is replaced: forget where the old one came from.
        for old in [p for p in base_locs if p[: len(key_path)] == key_path]:
            del base_locs[old]
        for new, loc in over_locs.items():
            if new[: len(key_path)] == key_path:
                base_locs[new] = loc
        merged[key] = value
    return merged


def _load_chain(path: Path, chain: tuple[Path, ...], read: list[Path] | None = None
                ) -> tuple[dict[str, Any], dict[FieldPath, Location]]:
    path = path.resolve()
    if read is not None:
        read.append(path)
    if path in chain:
        cycle = " -> ".join(_display_name(p) for p in (*chain, path))
        raise ProfileError([f"{_display_name(chain[-1])}: extends: cycle {cycle}"])
    data, locations = _read_yaml(path)
    shown = _display_name(path)
    data = _require_mapping(data, locations, shown)
    _resolve_paths(data, path.parent)
    parent_ref = data.pop("extends", None)
    extends_loc = locations.pop(("extends",), Location(shown))
    if parent_ref is None:
        return data, locations
    if not isinstance(parent_ref, str) or not parent_ref.strip():
        raise ProfileError([f"{extends_loc}: extends: must be the path of another profile file"])
    parent_path = path.parent / os.path.expanduser(parent_ref)
    if not parent_path.is_file():
        raise ProfileError([f"{extends_loc}: extends: {parent_ref!r} not found"])
    base, base_locs = _load_chain(parent_path, (*chain, path), read)
    base.pop("name", None)  # a name belongs to the file that sets it, not to its children
    base_locs.pop(("name",), None)
    return _merge(base, base_locs, data, locations), base_locs


def _require_mapping(data: Any, locations: dict[FieldPath, Location], shown: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        where = locations.get((), Location(shown))
        raise ProfileError([f"{where}: (profile): a profile is a YAML mapping of fields, not {_kind(data)}"])
    return data


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _resolve_paths(data: dict[str, Any], folder: Path) -> None:
    """Make relative path values absolute against `folder` (the file that wrote them).

    Absolute values are left alone, so running it again after an override only touches new values."""
    for pattern in PATH_FIELDS:
        for path, value, parent, key in _walk(data, pattern):
            if isinstance(value, str) and value.strip() and "\x00" not in value and path:
                expanded = os.path.expanduser(value)
                parent[key] = expanded if os.path.isabs(expanded) else os.path.normpath(folder / expanded)


def _walk(data: Any, pattern: FieldPath, path: FieldPath = ()):
    """Yield (path, value, container, key) for each value matching `pattern`."""
    if not pattern:
        return
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        items = list(enumerate(data)) if isinstance(data, list) else []
    else:
        items = [(head, data[head])] if isinstance(data, dict) and head in data else []
    for key, value in items:
        if rest:
            yield from _walk(value, rest, (*path, key))
        else:
            yield (*path, key), value, data, key


MAX_OVERRIDE_CHARS = 65536


def parse_override(text: str) -> tuple[FieldPath, Any]:
    """`machine.memory=2G` -> (("machine", "memory"), "2G"); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. machine.memory=2G")
    parts: list[str | int] = []
    for part in key.strip().split("."):
        if not part:
            raise UsageError(f"--set {text!r}: empty part in the key path {key!r}")
        parts.append(int(part) if part.isdigit() else part)
    if len(raw) > MAX_OVERRIDE_CHARS:
        raise UsageError(f"--set {key.strip()}=...: the value is longer than {MAX_OVERRIDE_CHARS} characters")
    try:
        value, _ = _parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else (None, {})
    except ProfileError as exc:
        if "YAML syntax error" not in str(exc):
            raise UsageError(str(exc).replace(": (profile):", ":", 1)) from None
        value = raw  # not YAML: take it as a plain string
    return tuple(parts), value


def apply_override(data: dict[str, Any], locations: dict[FieldPath, Location], text: str) -> None:
    """Apply one `--set`; paths in the value are relative to the working folder."""
    path, value = parse_override(text)
    target: Any = data
    for depth, part in enumerate(path[:-1]):
        nxt = path[depth + 1]
        if isinstance(target, dict) and isinstance(part, str):
            if not isinstance(target.get(part), dict | list):
                target[part] = [] if isinstance(nxt, int) else {}
            target = target[part]
        elif isinstance(target, list) and isinstance(part, int) and part < len(target):
            target = target[part]
        else:
            raise UsageError(f"--set {text!r}: {format_path(path[: depth + 1])} is not a mapping or list")
    last = path[-1]
    if isinstance(target, dict) and isinstance(last, str):
        target[last] = value
    elif isinstance(target, list) and isinstance(last, int) and last <= len(target):
        if last == len(target):
            target.append(value)
        else:
            target[last] = value
    else:
        raise UsageError(f"--set {text!r}: cannot set {format_path(path)}")
    for old in [p for p in locations if p[: len(path)] == path]:
        del locations[old]
    locations[path] = Location(f"--set {text}")
    _resolve_paths(data, Path.cwd())


def load_profile(
    file: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = (), name: str | None = None
) -> LoadedProfile:
    """Read a profile and its `extends:` chain, apply `--set` overrides and `--name`."""
    path = Path(file)
    read: list[Path] = []
    data, locations = _load_chain(path, (), read)
    for text in overrides:
        apply_override(data, locations, text)
    if name is not None:
        data["name"] = name
        locations[("name",)] = Location("--name")
    elif "name" not in data:
        data["name"] = path.stem
    return LoadedProfile(data=data, source=path, locations=locations, files=tuple(read))


def load_text(text: str, file: str = "<profile>") -> LoadedProfile:
    """Load a profile from a string (tests, the hypothesis fuzzer); `extends:` is not followed."""
    data, locations = _parse_yaml(text, file)
    data = _require_mapping(data, locations, file)
    _resolve_paths(data, Path.cwd())
    data.setdefault("name", Path(file).stem)
    return LoadedProfile(data=data, source=Path(file), locations=locations)
