"""focusft's import graph, read from the source with `ast`, and the layers it must respect.

Every module belongs to a layer: ``focusft.errors`` (0) at the bottom, ``focusft.commands`` and
``focusft.cli`` at the top. A module may import modules of its own layer or of layers below
it, never above, and the module graph has no circle (function-level imports count too: an
import inside a function is still an arrow). ``python tests/layers.py`` prints the layer graph
as the mermaid block of docs/architecture.md (a test keeps the two equal).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "focusft"

# Bottom to top. A module's layer is the first entry its dotted name starts with.
LAYERS = ["focusft.errors", "focusft.core", "focusft.sources", "focusft.data", "focusft.evaluation",
          "focusft.diagnostics", "focusft.training", "focusft.experiments", "focusft.benchmarks",
          "focusft.commands", "focusft.cli"]
# experiments and benchmarks: one layer (neither imports the other); the CLI and its commands: one
TOP = {"focusft.benchmarks": 7, "focusft.commands": 8, "focusft.cli": 8}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(node: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "focusft"}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != "focusft":
        return set()
    return {f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names}


def import_graph() -> dict[str, set[str]]:
    """module -> the focusft modules it imports (anywhere in its body)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps = set()
        for node in ast.walk(tree):
            deps |= _targets(node, name, path.name == "__init__.py", set(mods))
        graph[name] = {d for d in deps if d != name}
    return graph


def layer_of(module: str) -> int | None:
    """The layer index of a module, None for the package root (``focusft`` itself)."""
    for prefix, index in TOP.items():
        if module == prefix or module.startswith(prefix + "."):
            return index
    for index, prefix in enumerate(LAYERS[:-2]):
        if module == prefix or module.startswith(prefix + "."):
            return index
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import from a lower layer to a higher one (or to a module in no layer)."""
    bad = []
    for module, deps in sorted(graph.items()):
        own = layer_of(module)
        if own is None:
            continue  # the package root re-exports the public surface
        for dep in sorted(deps):
            theirs = layer_of(dep)
            if theirs is None or theirs > own:
                bad.append(f"{module} -> {dep}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Which subpackage imports which (the picture in docs/architecture.md)."""
    def short(m):
        return m.split(".")[1] if m.count(".") else m
    edges = defaultdict(set)
    for module, deps in graph.items():
        for dep in deps:
            a, b = short(module), short(dep)
            if a != b and a != "focusft":
                edges[a].add(b)
    return edges


def mermaid(graph: dict[str, set[str]]) -> str:
    names = [p.split(".")[1] for p in LAYERS]
    edges = layer_edges(graph)
    lines = ["```mermaid", "flowchart TD"]
    lines += [f"    {a} --> {b}" for a in reversed(names) for b in reversed(names) if b in edges.get(a, ())]
    lines.append("```")
    return "\n".join(lines)


if __name__ == "__main__":
    print(mermaid(import_graph()))
