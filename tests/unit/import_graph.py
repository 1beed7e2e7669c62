"""qemuvm's import graph, derived from the code: every `import` of a qemuvm module (lazy ones inside functions
included, `if TYPE_CHECKING:` blocks left out), each module placed in its layer (DESIGN.md's order). Used by
test_layers.py, and run as a script it writes the graph into ARCHITECTURE.md:

    .venv/bin/python tests/unit/import_graph.py --write
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "qemuvm"
ARCHITECTURE = REPO / "ARCHITECTURE.md"
BEGIN, END = "<!-- import graph: begin (tests/unit/import_graph.py --write) -->", "<!-- import graph: end -->"

# Lowest first. A module may import its own layer's modules and those of lower layers, never a higher one.
LAYERS = ["leaf", "profile", "qemu", "images", "runtime", "convert", "control", "api", "workflow", "cli", "main"]
# Same rank: the layers on top of the api, which the CLI fronts (and which never import each other).
SIBLINGS = {"testing": "workflow", "web": "workflow"}
LEAVES = {"qemuvm", "qemuvm.errors", "qemuvm.files", "qemuvm.paths"}
CLI_MAY_IMPORT = {"leaf", "api", "workflow", "top", "web", "cli"}  # the CLI is a thin layer over these
# ... and this one module more: `up` starts its supervisor before the CLI imports the api (start time).
CLI_MAY_ALSO_IMPORT = {"qemuvm.runtime.spawn"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def layer(module: str) -> str:
    if module in LEAVES:
        return "leaf"
    part = module.split(".")[1]
    return "main" if part == "__main__" else part


def rank(name: str) -> int:
    return LAYERS.index(SIBLINGS.get(name, name))


def edges() -> dict[str, set[str]]:
    """module -> the qemuvm modules it imports (anywhere in it but under `if TYPE_CHECKING:`)."""
    known = modules()

    def resolve(name: str) -> str | None:
        while name not in known:
            if "." not in name:
                return None
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in known.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for inner in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qemuvm":
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.split(".")[0] == "qemuvm"]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target is not None and target != module and not module.startswith(f"{target}."):
                    graph[module].add(target)
    return graph


def layer_edges() -> dict[str, set[str]]:
    """layer -> the other layers its modules import."""
    out: dict[str, set[str]] = defaultdict(set)
    for module, targets in edges().items():
        for target in targets:
            if layer(target) != layer(module):
                out[layer(module)].add(layer(target))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def block() -> str:
    """The graph as ARCHITECTURE.md shows it: each layer, its modules, and the layers it imports."""
    by_layer: dict[str, list[str]] = defaultdict(list)
    for module, path in modules().items():
        by_layer[layer(module)].append(str(path.relative_to(PACKAGE)))
    imports = layer_edges()
    rows = ["| layer | modules | imports (derived from the code) |", "|---|---|---|"]
    for name in sorted(by_layer, key=lambda n: (rank(n), n)):
        files = ", ".join(f"`{f}`" for f in sorted(by_layer[name]))
        below = ", ".join(sorted(imports.get(name, ()), key=lambda n: (rank(n), n))) or "-"
        rows.append(f"| {name} | {files} | {below} |")
    return "\n".join([BEGIN, *rows, END])


def written_block() -> str | None:
    text = ARCHITECTURE.read_text()
    if BEGIN not in text or END not in text:
        return None
    return text[text.index(BEGIN):text.index(END) + len(END)]


def write() -> None:
    text = ARCHITECTURE.read_text()
    old = written_block()
    ARCHITECTURE.write_text(text.replace(old, block()) if old else text.rstrip("\n") + "\n\n" + block() + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write()
