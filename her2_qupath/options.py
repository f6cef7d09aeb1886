"""The one request model: every scoring option, once, with its name, type, range and default.

The command line (``score``, ``batch``, ``validate``, ``calibrate``), the server's
JSON Schema / OpenAPI document and the option table in ``docs/options.md`` are all
generated from :data:`OPTIONS`, and :func:`score_options` turns the values of any of
them into one :class:`~her2_qupath.config.ScoreOptions`. Defaults are read from
:mod:`her2_qupath.config`, never written twice.

An option's ``name`` is its key in the server's ``options`` object; its command-line
flag is ``--name`` with dashes unless :attr:`OptionSpec.flag` says otherwise (the
working pixel size is ``--working-mpp`` because ``--mpp`` is the slide's own pixel
size). Model options differ by carrier: the command line takes a model directory, the
server a model name under its ``--models-dir`` (``options.models``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from .calibration_file import apply_calibration, check_calibration, load_calibration
from .config import (
    GUIDELINES,
    TILE_SIZE_RANGE,
    Aggregation,
    Level,
    ModelConfig,
    Precision,
    ScoreOptions,
    ScoringConfig,
    StainConfig,
    TilingConfig,
)
from .errors import UserInputError
from .optics import parse_rgb
from .stain import StainVectors

__all__ = [
    "OPTIONS",
    "MODEL_OPTIONS",
    "OptionSpec",
    "Carrier",
    "option",
    "label",
    "parse_thresholds",
    "score_options",
    "options_table",
    "with_table",
    "TABLE_BEGIN",
    "TABLE_END",
    "TABLE_DOCS",
]

Carrier = Literal["cli", "api"]
Kind = Literal["choice", "int", "float", "flag", "text", "rgb", "thresholds", "calibration", "model"]

_T, _S, _M, _SC = TilingConfig(), StainConfig(), ModelConfig(), ScoringConfig()


@dataclass(frozen=True)
class OptionSpec:
    """One scoring option, as every interface shows it."""

    name: str  # key in the server's ``options`` object
    kind: Kind
    help: str
    default: Any = None  # from config.py; None = not set (estimated, or not used)
    choices: tuple[str, ...] = ()
    bounds: tuple[float, float] | None = None  # inclusive
    flag: str | None = None  # command-line flag when it is not --name-with-dashes
    carriers: tuple[Carrier, ...] = ("cli", "api")
    api_key: str | None = None  # model options: key under ``options.models``
    metavar: str | None = None
    doc: str = ""  # further Markdown for the docs' table (links, details)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def default_text(self) -> str:
        """The default as the docs and ``--help`` show it."""
        if self.kind == "flag":
            return "off"
        if self.kind == "thresholds":
            return (f"membrane {','.join(map(str, _S.membrane_thresholds))} OD·µm; "
                    f"od {','.join(map(str, _S.thresholds))} DAB OD")
        if self.default is None:
            return "—"
        return str(self.default)


#: Every scoring option, in the order ``--help`` and the docs show them.
OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("guideline", "choice", "Clinical rule used for the region and slide score.",
               _SC.guideline, choices=tuple(sorted(GUIDELINES)),
               doc="ASCO/CAP for breast and gastric, Buza 2021 for endometrial; see [scoring](scoring.md)"),
    OptionSpec("level", "choice", "Count stained tumour-area pixels or tumour cells.",
               _SC.level, choices=get_args(Level),
               doc="`pixel`: share of the scored tumour area whose membrane reaches each class (8 µm "
               "blocks, about one cell each); `cell`: of tumour cells ([cells](cells.md)); pixel is "
               "more accurate on real IHC ([scoring](scoring.md#level-cells-or-pixels))"),
    OptionSpec("aggregation", "choice", "Slide score by the guideline rule or by the paper's Algorithm 1.",
               _SC.aggregation, choices=get_args(Aggregation),
               doc="`paper-adapted`: Algorithm 1 with the guideline's tile classes"),
    OptionSpec("tile_size", "int", "Tile size f in pixels at the working pixel size.",
               _T.tile_size, bounds=(float(TILE_SIZE_RANGE[0]), float(TILE_SIZE_RANGE[1]))),
    OptionSpec("mpp", "float", "Working pixel size (µm/px) the tiles are read at.",
               _T.mpp, bounds=(0.05, 50.0), flag="--working-mpp"),
    OptionSpec("min_tissue_fraction", "float",
               "Least tissue share of a tile for it to be scored.",
               _T.min_tissue_fraction, bounds=(0.0, 1.0)),
    OptionSpec("intensity", "choice",
               "What the stain classes grade: the membranes' DAB line density (OD·µm) or each "
               "pixel's DAB OD with QuPath's thresholds (docs/stain.md).",
               _S.intensity, choices=("membrane", "od")),
    OptionSpec("thresholds", "thresholds",
               "Thresholds for 1+, 2+, 3+ of the chosen intensity, increasing.",
               bounds=(0.0, 10.0), metavar="T1,T2,T3"),
    OptionSpec("calibration", "calibration",
               "A calibration from `her2-qupath calibrate` (membrane thresholds fitted to your "
               "laboratory's cases): a file on the command line, its JSON content on the "
               "server. Not with thresholds or intensity od."),
    OptionSpec("background", "rgb",
               "White point (RGB of empty glass) when the slide shows too little glass to "
               "estimate it; estimated from the glass when absent.",
               bounds=(0.0, 255.0), metavar="R,G,B"),
    OptionSpec("stain_vectors", "text",
               "QuPath stain string (setColorDeconvolutionStains JSON) to use instead of the "
               "H-DAB defaults."),
    OptionSpec("estimate_stains", "flag", "Estimate the stain vectors from the slide (Macenko).",
               False),
    OptionSpec("tumor_model", "model", "The H&E tumour classifier C (needs an H&E slide).",
               api_key="tumor"),
    OptionSpec("stain_model", "model", "The IHC stain-intensity classifier L.", api_key="stain"),
    OptionSpec("seg_model", "model",
               "The IHC stain segmenter M (replaces colour deconvolution).", api_key="segmenter"),
    OptionSpec("precision", "choice", "Model inference precision.", _M.precision,
               choices=get_args(Precision)),
    OptionSpec("clip_tiles", "flag",
               "Cut the tile outlines written to QuPath to the scored regions (their numbers "
               "are those of the whole tile's scored part either way).", False),
)

#: The model options (a directory on the command line, a name under ``options.models``).
MODEL_OPTIONS: tuple[OptionSpec, ...] = tuple(o for o in OPTIONS if o.kind == "model")
_BY_NAME = {o.name: o for o in OPTIONS}


def option(name: str) -> OptionSpec:
    """The spec of one option by its name."""
    return _BY_NAME[name]


def label(name: str, carrier: Carrier) -> str:
    """How an error names the option: ``--tile-size`` or ``options.tile_size``."""
    spec = _BY_NAME[name]
    if carrier == "cli":
        return spec.cli_flag
    return f"options.models.{spec.api_key}" if spec.kind == "model" else f"options.{name}"


def parse_thresholds(value: Any, what: str) -> tuple[float, float, float]:
    """Three increasing positive numbers from ``"a,b,c"`` or a sequence."""
    raw = value
    parts = value.replace(",", " ").split() if isinstance(value, str) else value
    try:
        values = tuple(float(v) for v in parts)
    except (TypeError, ValueError) as err:
        raise UserInputError(f"{what} {raw!r} is not three comma-separated numbers",
                             hint="e.g. 0.044,0.136,0.312 (membrane) or 0.2,0.4,0.6 (od)") from err
    lo, hi = _BY_NAME["thresholds"].bounds or (0.0, float("inf"))
    if len(values) != 3 or not (lo < values[0] < values[1] < values[2] <= hi):
        raise UserInputError(f"{what} must be three positive numbers that increase, got {raw!r}",
                             hint="e.g. 0.044,0.136,0.312 (membrane) or 0.2,0.4,0.6 (od)")
    return values  # type: ignore[return-value]


def _check(spec: OptionSpec, value: Any, carrier: Carrier) -> Any:
    """The value, checked against the spec (the server's schema checks it too)."""
    what = label(spec.name, carrier)
    if spec.kind == "choice":
        if value not in spec.choices:
            raise UserInputError(f"{what} must be one of {', '.join(spec.choices)}, got {value!r}",
                                 hint=f"e.g. {spec.default}")
        return value
    if spec.kind in ("int", "float"):
        number = int(value) if spec.kind == "int" else float(value)
        assert spec.bounds is not None
        if isinstance(value, bool) or not spec.bounds[0] <= number <= spec.bounds[1]:
            raise UserInputError(f"{what} must be within {spec.bounds[0]:g}..{spec.bounds[1]:g}, "
                                 f"got {value!r}", hint=f"the default is {spec.default}")
        return number
    if spec.kind == "flag":
        return bool(value)
    if spec.kind == "thresholds":
        return parse_thresholds(value, what)
    if spec.kind == "rgb":
        return parse_rgb(value, what)
    if spec.kind == "text":
        StainVectors.from_qupath(str(value))  # refuses a bad stain string before any work
        return str(value)
    if spec.kind == "calibration":  # a file on the command line, its content on the server
        if isinstance(value, (str, Path)):
            return load_calibration(value)
        return check_calibration(value, what)
    return value


def score_options(
    values: Mapping[str, Any],
    carrier: Carrier,
    *,
    base_calibration: Mapping[str, Any] | None = None,
    resolve_model: Callable[[OptionSpec, Any], Path] | None = None,
) -> ScoreOptions:
    """``ScoreOptions`` from option values keyed by :attr:`OptionSpec.name`.

    ``values`` holds what the user gave (absent or ``None``: the default). A
    ``calibration`` value is a file path or the file's JSON content (checked by
    :mod:`calibration_file`); a checked ``base_calibration`` (the server's
    ``--calibration``) applies when the request brings none, and explicit thresholds
    then refine it. ``resolve_model`` turns a model value (directory or name) into a
    directory.
    """
    unknown = sorted(set(values) - set(_BY_NAME))
    if unknown:
        raise UserInputError(f"unknown option {unknown[0]!r}",
                             hint="options: " + ", ".join(_BY_NAME))
    given = {k: _check(_BY_NAME[k], v, carrier) for k, v in values.items()
             if v is not None and not (_BY_NAME[k].kind == "flag" and v is False)}
    calibration = given.get("calibration")
    if calibration is not None and ("thresholds" in given or given.get("intensity") == "od"):
        raise UserInputError(f"{label('calibration', carrier)} sets the membrane thresholds",
                             hint=f"drop {label('thresholds', carrier)} and "
                                  f"{label('intensity', carrier)} od")
    base = ScoreOptions()
    if calibration is None and base_calibration is not None:
        calibration = base_calibration
    if calibration is not None:
        base = apply_calibration(base, calibration)
    intensity = given.get("intensity", base.stain.intensity)
    stain_changes: dict[str, Any] = {"intensity": intensity,
                                     "estimate_vectors": given.get("estimate_stains", False)}
    if "thresholds" in given:
        stain_changes["membrane_thresholds" if intensity == "membrane" else "thresholds"] = given["thresholds"]
    if "background" in given:
        stain_changes["background"] = given["background"]
    changes: dict[str, Any] = {
        "scoring": dataclasses.replace(base.scoring, **_pick(given, ("guideline", "level", "aggregation"))),
        "tiling": dataclasses.replace(base.tiling, **_pick(given, ("tile_size", "mpp", "min_tissue_fraction"))),
        "stain": dataclasses.replace(base.stain, **stain_changes),
        "model": dataclasses.replace(base.model, **_pick(given, ("precision",))),
        "stain_vectors": given.get("stain_vectors"),
        "clip_tiles": given.get("clip_tiles", False),
    }
    for spec in MODEL_OPTIONS:
        if spec.name in given:
            changes[spec.name] = (resolve_model(spec, given[spec.name]) if resolve_model
                                  else Path(given[spec.name]))
    return dataclasses.replace(base, **changes)


def _pick(given: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    return {n: given[n] for n in names if n in given}


def _type_text(spec: OptionSpec) -> str:
    if spec.kind == "choice":
        return " / ".join(f"`{c}`" for c in spec.choices)
    if spec.kind in ("int", "float") and spec.bounds:
        return f"{spec.kind} {spec.bounds[0]:g}–{spec.bounds[1]:g}"
    return {"flag": "flag (boolean)", "text": "QuPath stain string",
            "rgb": "R,G,B (each in (0, 255])", "thresholds": "3 increasing numbers in (0, 10]",
            "calibration": "file (CLI) / its JSON (server)",
            "model": "directory (CLI) / name (server)"}.get(spec.kind, spec.kind)


def options_table() -> str:
    """The Markdown option table of ``docs/options.md`` (generated; a test compares them)."""
    rows = ["| option (server `options.`) | command line | type | default | meaning |",
            "|---|---|---|---|---|"]
    for spec in OPTIONS:
        key = f"`models.{spec.api_key}`" if spec.kind == "model" else f"`{spec.name}`"
        meaning = spec.help + (f" — {spec.doc}" if spec.doc else "")
        rows.append(f"| {key} | `{spec.cli_flag}` | {_type_text(spec)} | {spec.default_text} | "
                    f"{meaning.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


#: Markers around a generated option table in the docs.
TABLE_BEGIN = "<!-- scoring options: generated by `python -m her2_qupath.options --write-docs` -->"
TABLE_END = "<!-- end of scoring options -->"
#: The docs that show the table (relative to the repository root).
TABLE_DOCS: tuple[str, ...] = ("docs/options.md",)


def with_table(text: str, table: str | None = None) -> str:
    """``text`` with the part between the markers replaced by the generated table."""
    start, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if start < 0 or end < start:
        raise UserInputError("no option-table markers in the text",
                             hint=f"put {TABLE_BEGIN} and {TABLE_END} where the table goes")
    body = table if table is not None else options_table()
    return text[: start + len(TABLE_BEGIN)] + "\n" + body + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m her2_qupath.options [--write-docs ROOT]``: print or rewrite the tables."""
    args = list(argv if argv is not None else sys.argv[1:])
    if args[:1] != ["--write-docs"]:
        print(options_table(), end="")
        return 0
    root = Path(args[1] if len(args) > 1 else ".")
    for name in TABLE_DOCS:
        path = root / name
        path.write_text(with_table(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote the option table into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
