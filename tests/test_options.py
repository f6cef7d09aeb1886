"""The one request model: the CLI, the server's schema and docs/options.md cannot drift from it,
and the command line and the server turn the same values into the same scoring settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from her2_qupath.calibration_file import FORMAT, VERSION, check_calibration
from her2_qupath.cli import cli
from her2_qupath.config import ScoreOptions, StainConfig
from her2_qupath.errors import UserInputError
from her2_qupath.options import (
    MODEL_OPTIONS,
    OPTIONS,
    TABLE_DOCS,
    label,
    options_table,
    score_options,
    with_table,
)
from her2_qupath.server.schemas import SCHEMAS, validate
from her2_qupath.server.scorers import PipelineScorer

ROOT = Path(__file__).resolve().parents[1]
SCORING_COMMANDS = ("score", "batch", "validate", "calibrate")
#: the options of each command that are not scoring options (inputs, outputs, modes)
OWN_OPTIONS = {
    "score": {"--ihc", "--he", "--transform", "--roi", "--roi-class", "--roi-on", "--mpp", "--he-mpp",
              "--output", "--overwrite", "--force", "--json"},
}


def _params(command: str) -> dict[str, click.Parameter]:
    cmd = cli.get_command(click.Context(cli), command)  # type: ignore[attr-defined]
    assert cmd is not None
    return {opt: p for p in cmd.params for opt in p.opts if opt.startswith("--")}


@pytest.mark.parametrize("command", SCORING_COMMANDS)
def test_every_scoring_command_takes_the_model_options(command: str) -> None:
    params = _params(command)
    for spec in OPTIONS:
        param = params.get(spec.cli_flag)
        assert param is not None, f"{command} lacks {spec.cli_flag}"
        if spec.kind == "choice":
            assert list(param.type.choices) == list(spec.choices)  # type: ignore[attr-defined]
            assert param.default == spec.default
        elif spec.kind in ("int", "float"):
            assert (param.type.min, param.type.max) == spec.bounds  # type: ignore[attr-defined]
            assert param.default == spec.default
        elif spec.kind == "flag":
            assert param.is_flag  # type: ignore[attr-defined]
        else:
            assert param.default is None


def test_score_has_no_scoring_option_outside_the_model() -> None:
    flags = set(_params("score"))
    extra = flags - {s.cli_flag for s in OPTIONS} - OWN_OPTIONS["score"]
    assert extra == set(), f"options not in the request model: {sorted(extra)}"


def test_the_server_schema_is_the_model() -> None:
    props = SCHEMAS["ScoreOptions"]["properties"]
    assert set(props) == {s.name for s in OPTIONS if s.kind != "model"} | {"models"}
    assert set(props["models"]["properties"]) == {s.api_key for s in MODEL_OPTIONS}
    for spec in OPTIONS:
        if spec.kind == "choice":
            assert props[spec.name]["enum"] == list(spec.choices)
        if spec.kind in ("int", "float"):
            assert (props[spec.name]["minimum"], props[spec.name]["maximum"]) == spec.bounds
        if spec.default is not None and spec.kind != "flag":
            assert props[spec.name]["default"] == spec.default
    # the documented range holds at the edges: inside passes, just outside is refused
    validate("ScoreOptions", {"tile_size": 64, "mpp": 0.05, "min_tissue_fraction": 1})
    for bad in ({"tile_size": 63}, {"mpp": 50.5}, {"min_tissue_fraction": 1.1}, {"level": "tile"},
                {"colour": "red"}, {"models": {"scorer": "x"}}):
        with pytest.raises(UserInputError):
            validate("ScoreOptions", bad)


@pytest.mark.parametrize("doc", TABLE_DOCS)
def test_docs_table_is_the_generated_one(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert text == with_table(text), f"{doc} is stale: run python -m her2_qupath.options --write-docs"
    for spec in OPTIONS:
        assert f"`{spec.cli_flag}`" in text


def test_table_shows_every_default_from_config() -> None:
    table = options_table()
    defaults = ScoreOptions()
    assert f"| {defaults.tiling.tile_size} |" in table and f"| {defaults.tiling.mpp} |" in table
    assert ",".join(map(str, StainConfig().membrane_thresholds)) in table
    assert len(table.strip().splitlines()) == 2 + len(OPTIONS)


def test_nothing_given_is_the_configured_defaults() -> None:
    assert score_options({}, "cli") == ScoreOptions()
    assert score_options({}, "api") == ScoreOptions()
    assert PipelineScorer().score_options({}) == ScoreOptions()


def test_command_line_and_server_build_the_same_settings() -> None:
    from her2_qupath.cli.score import build_options

    stain = ('{"Name": "x", "Stain 1": "Hematoxylin", "Values 1": "0.65 0.70 0.29", '
             '"Stain 2": "DAB", "Values 2": "0.27 0.57 0.78", "Background": "250 250 250"}')
    cli_values = {"guideline": "gastric", "level": "cell", "aggregation": "paper", "tile_size": 256,
                  "working_mpp": 0.25, "min_tissue_fraction": 0.2, "intensity": "membrane",
                  "thresholds": "0.05,0.1,0.2", "background": "240,241,242", "stain_vectors": stain,
                  "estimate_stains": True, "precision": "fp32", "clip_tiles": True}
    api_values = {"guideline": "gastric", "level": "cell", "aggregation": "paper", "tile_size": 256,
                  "mpp": 0.25, "min_tissue_fraction": 0.2, "intensity": "membrane",
                  "thresholds": [0.05, 0.1, 0.2], "background": [240, 241, 242], "stain_vectors": stain,
                  "estimate_stains": True, "precision": "fp32", "clip_tiles": True}
    validate("ScoreOptions", api_values)
    from_cli = build_options(**cli_values)
    from_api = PipelineScorer().score_options(api_values)
    assert from_cli == from_api
    # and each value reached its field (written out by hand, not through the model)
    assert from_cli.scoring.guideline == "gastric" and from_cli.scoring.level == "cell"
    assert from_cli.scoring.aggregation == "paper"
    assert from_cli.tiling.tile_size == 256 and from_cli.tiling.mpp == 0.25
    assert from_cli.tiling.min_tissue_fraction == 0.2
    assert from_cli.stain.membrane_thresholds == (0.05, 0.1, 0.2)
    assert from_cli.stain.thresholds == StainConfig().thresholds
    assert from_cli.stain.background == (240.0, 241.0, 242.0) and from_cli.stain.estimate_vectors
    assert from_cli.stain_vectors == stain and from_cli.model.precision == "fp32" and from_cli.clip_tiles


def test_thresholds_grade_the_chosen_intensity() -> None:
    od = score_options({"intensity": "od", "thresholds": [0.1, 0.3, 0.5]}, "api")
    assert od.stain.thresholds == (0.1, 0.3, 0.5)
    assert od.stain.membrane_thresholds == StainConfig().membrane_thresholds


@pytest.mark.parametrize(("values", "cli_name", "api_name"), [
    ({"tile_size": 10}, "--tile-size", "options.tile_size"),
    ({"mpp": 0.01}, "--working-mpp", "options.mpp"),
    ({"thresholds": [0.3, 0.2, 0.1]}, "--thresholds", "options.thresholds"),
    ({"background": [0, 10, 10]}, "--background", "options.background"),
    ({"level": "tile"}, "--level", "options.level"),
])  # fmt: skip
def test_errors_name_the_option_as_each_interface_spells_it(values: dict[str, Any], cli_name: str,
                                                            api_name: str) -> None:
    for carrier, name in (("cli", cli_name), ("api", api_name)):
        with pytest.raises(UserInputError, match=name.replace(".", r"\.")):
            score_options(values, carrier)  # type: ignore[arg-type]


def test_bad_stain_string_and_unknown_option_are_refused_before_work() -> None:
    with pytest.raises(UserInputError, match="stain"):
        score_options({"stain_vectors": "not a stain string"}, "api")
    with pytest.raises(UserInputError, match="unknown option 'colour'"):
        score_options({"colour": "red"}, "api")
    with pytest.raises(UserInputError, match="without a scorer model"):
        PipelineScorer().score_options({"models": {"scorer": "x"}})


def _calibration(t: list[float]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "membrane_thresholds": t,
            "membrane_tissue_od_sum": 0.08}


def test_calibration_rules(tmp_path: Path) -> None:
    own = _calibration([0.03, 0.09, 0.25])
    calibrated = score_options({"calibration": own}, "api")
    assert calibrated.stain.membrane_thresholds == (0.03, 0.09, 0.25)
    assert calibrated.stain.membrane_tissue_od_sum == 0.08 and "sha256" in (calibrated.calibration or "")
    for values, names in (({"calibration": own, "thresholds": [0.1, 0.2, 0.3]}, ("--calibration", "--thresholds")),
                          ({"calibration": own, "intensity": "od"}, ("--calibration", "--intensity"))):
        with pytest.raises(UserInputError) as err:
            score_options(values, "cli")
        assert all(n in f"{err.value} {err.value.hint}" for n in names)
    # the server's calibration is the base; a request's own replaces it; thresholds refine it
    server = check_calibration(_calibration([0.02, 0.05, 0.1]), "serve --calibration")
    assert score_options({}, "api", base_calibration=server).stain.membrane_thresholds == (0.02, 0.05, 0.1)
    assert score_options({"calibration": own}, "api",
                         base_calibration=server).stain.membrane_thresholds == (0.03, 0.09, 0.25)
    refined = score_options({"thresholds": [0.04, 0.1, 0.2]}, "api", base_calibration=server)
    assert refined.stain.membrane_thresholds == (0.04, 0.1, 0.2)
    # the command line reads the file
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(own))
    assert score_options({"calibration": str(path)}, "cli").stain.membrane_thresholds == (0.03, 0.09, 0.25)


def test_labels() -> None:
    assert label("mpp", "cli") == "--working-mpp" and label("mpp", "api") == "options.mpp"
    assert label("seg_model", "api") == "options.models.segmenter"


def test_a_new_option_reaches_the_command_line(tmp_path: Path) -> None:
    """--min-tissue-fraction (once server-only) is now on the command line, range checked by click."""
    (tmp_path / "x.png").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "her2_qupath", "score", "--ihc", str(tmp_path / "x.png"),
                           "-o", str(tmp_path / "o"), "--min-tissue-fraction", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--min-tissue-fraction" in proc.stderr
    assert not (tmp_path / "o").exists()
