"""The import contract: layers that only point down, and no cycles inside a layer.

Run ``python -m her2_qupath._layers``: it reads every module of the package (no
import is executed), collects every import of a ``her2_qupath`` module — at the
top of a file, inside a function or under ``TYPE_CHECKING`` alike — and fails
(exit 1) when

- a module belongs to no layer (add it to :data:`LAYERS`);
- a module imports one from a higher layer;
- modules of one layer import each other in a cycle (an import moved into a
  function does not hide it);
- a module is longer than :data:`MAX_LINES` lines.

Data flows one way: slide → tiles → analysis → scores → QuPath objects, and the
layers follow it (see ``docs/architecture.md``).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LAYERS", "MAX_LINES", "Violation", "check", "import_graph", "layer_of", "main"]

PACKAGE = "her2_qupath"

#: Longest module allowed, in lines.
MAX_LINES = 600

#: Bottom to top. A pattern names a module, ``name.*`` its submodules as well.
#: The first layer whose pattern matches is the module's layer.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base: types, defaults, errors, the request model", (
        "her2_qupath", "her2_qupath._types", "her2_qupath.errors", "her2_qupath.config",
        "her2_qupath._io", "her2_qupath.calibration_file", "her2_qupath._layers",
    )),
    ("I/O: slides, GeoJSON, QuPath classes and ownership", (
        "her2_qupath.slide", "her2_qupath.slide.*", "her2_qupath.slide_writer",
        "her2_qupath.qupath", "her2_qupath.qupath.classes", "her2_qupath.qupath.objects",
        "her2_qupath.qupath.geojson", "her2_qupath.qupath.geojson.*",
        "her2_qupath.qupath.validate", "her2_qupath.qupath.stream",
        "her2_qupath.models", "her2_qupath.models.io",
    )),
    ("analysis: optics, tissue, stain, cells, scoring, registration, models, pictures", (
        "her2_qupath.optics", "her2_qupath.tissue", "her2_qupath.tiling",
        "her2_qupath.stain", "her2_qupath.stain.*", "her2_qupath.membrane",
        "her2_qupath.cells", "her2_qupath.cells.*", "her2_qupath.cell_table",
        "her2_qupath.scoring", "her2_qupath.scoring.*", "her2_qupath.agreement",
        "her2_qupath.render", "her2_qupath.synthetic", "her2_qupath.synthetic.*",
        "her2_qupath.registration", "her2_qupath.registration.*",
        "her2_qupath.models.*", "her2_qupath.case_report",
    )),
    ("pipeline: one run, its QuPath objects, checks and executors", (
        "her2_qupath.qupath.builder", "her2_qupath.pipeline", "her2_qupath.pipeline.*",
        "her2_qupath.preflight", "her2_qupath.executors", "her2_qupath.options",
    )),
    ("workflows: projects, batch, validation, calibration, demo", (
        "her2_qupath.qupath.*", "her2_qupath.batch", "her2_qupath.validation",
        "her2_qupath.validation_report", "her2_qupath.calibration", "her2_qupath.demo",
    )),
    ("interfaces: command line and server", (
        "her2_qupath.cli", "her2_qupath.cli.*", "her2_qupath.server", "her2_qupath.server.*",
        "her2_qupath.__main__",
    )),
)


@dataclass(frozen=True)
class Violation:
    module: str
    message: str

    def __str__(self) -> str:
        return f"{self.module}: {self.message}"


def _modules(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _owner(name: str, modules: dict[str, Path]) -> str:
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import of a package module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                yield _owner(candidate if candidate in modules else target, modules), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield _owner(alias.name, modules), node.lineno


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of the module's layer, or None when no pattern matches."""
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return index
    return None


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module → {imported package module: first line of that import}."""
    modules = _modules(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in _imports(module, path, modules):
            if target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in graph:
                    continue
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def check(root: Path | None = None) -> list[Violation]:
    """Every breach of the contract in the package at ``root`` (default: this package)."""
    root = root or Path(__file__).resolve().parent
    graph = import_graph(root)
    modules = _modules(root)
    violations: list[Violation] = []
    layers = {m: layer_of(m) for m in graph}
    for module in sorted(graph):
        own = layers[module]
        if own is None:
            violations.append(Violation(module, "belongs to no layer: add it to _layers.LAYERS"))
            continue
        lines = len(modules[module].read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            violations.append(Violation(module, f"{lines} lines, more than {MAX_LINES}: split it"))
        for target, line in sorted(graph[module].items()):
            theirs = layers.get(target)
            if theirs is not None and theirs > own:
                violations.append(Violation(
                    module, f"line {line} imports {target} from a higher layer "
                    f"({LAYERS[theirs][0].split(':')[0]} above {LAYERS[own][0].split(':')[0]})"))
    same_layer = {m: {t: n for t, n in edges.items() if layers.get(t) == layers[m]}
                  for m, edges in graph.items() if layers[m] is not None}
    for cycle in _cycles(same_layer):
        violations.append(Violation(cycle[0], "import cycle among " + ", ".join(cycle)
                                    + ": move what they share into a lower module"))
    return violations


def _describe(root: Path) -> Iterable[str]:
    graph = import_graph(root)
    for index, (title, _) in enumerate(LAYERS):
        members = sorted(m for m in graph if layer_of(m) == index)
        yield f"{index} {title}: {len(members)} modules"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m her2_qupath._layers", description=__doc__.split("\n")[0])
    parser.add_argument("--quiet", action="store_true", help="print only violations")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent
    if not args.quiet:
        for line in _describe(root):
            print(line)
    violations = check(root)
    for violation in violations:
        print(f"VIOLATION {violation}")
    if violations:
        print(f"{len(violations)} violations of the import contract", file=sys.stderr)
        return 1
    print("import contract kept: layers point down, no cycles, no module over "
          f"{MAX_LINES} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
