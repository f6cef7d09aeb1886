"""The import contract (her2_qupath._layers) holds for the package, and it can fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from her2_qupath._layers import LAYERS, MAX_LINES, check, import_graph, layer_of


def _package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "her2_qupath"
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


def test_the_package_keeps_the_contract() -> None:
    proc = subprocess.run([sys.executable, "-m", "her2_qupath._layers"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "import contract kept" in proc.stdout


def test_every_layer_has_modules_and_the_order_is_the_data_flow() -> None:
    graph = import_graph(Path(__import__("her2_qupath").__file__).parent)
    counts = [sum(layer_of(m) == i for m in graph) for i in range(len(LAYERS))]
    assert all(counts), counts
    assert layer_of("her2_qupath.config") < layer_of("her2_qupath.slide") < layer_of("her2_qupath.stain")  # type: ignore[operator]
    assert layer_of("her2_qupath.stain") < layer_of("her2_qupath.pipeline") < layer_of("her2_qupath.batch")  # type: ignore[operator]
    assert layer_of("her2_qupath.batch") < layer_of("her2_qupath.cli.score") == layer_of("her2_qupath.server.api")  # type: ignore[operator]


def test_an_upward_import_is_found_even_inside_a_function(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "config.py": "",
        "stain.py": "def f():\n    from .cli import main\n    return main\n",
        "cli/__init__.py": "from ..stain import f\nmain = f\n",
    })
    found = [str(v) for v in check(pkg)]
    assert found == ["her2_qupath.stain: line 2 imports her2_qupath.cli from a higher layer "
                     "(interfaces above analysis)"], found


def test_a_cycle_inside_a_layer_is_found_through_function_imports(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "stain.py": "from .cells import g\n",
        "cells.py": "def g():\n    from . import stain\n    return stain\n",
        "tissue.py": "from .stain import g\n",
    })
    found = [str(v) for v in check(pkg)]
    assert len(found) == 1 and "import cycle" in found[0], found
    assert "her2_qupath.cells" in found[0] and "her2_qupath.stain" in found[0]
    assert "tissue" not in found[0]  # importing into a cycle is not a cycle


def test_unassigned_and_long_modules_are_found(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "misc.py": "",
        "scoring.py": "x = 1\n" * (MAX_LINES + 1),
    })
    found = sorted(str(v) for v in check(pkg))
    assert found == [
        "her2_qupath.misc: belongs to no layer: add it to _layers.LAYERS",
        f"her2_qupath.scoring: {MAX_LINES + 1} lines, more than {MAX_LINES}: split it",
    ]


def test_a_clean_package_passes(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "__version__ = '1'\n",
        "config.py": "from . import __version__\n",
        "stain.py": "from .config import __version__\nfrom . import config\n",
        "cli/__init__.py": "from ..stain import __version__\n",
    })
    assert check(pkg) == []
