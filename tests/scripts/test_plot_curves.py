"""scripts/plot_curves.py draws kept runs' validation curves, one distinct colour and legend line per run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import load_script

plot_curves = load_script("scripts/plot_curves.py")

METRIC = "val/sequential/ndcg@10"


def kept(tmp_path: Path, rows: list[dict]) -> Path:
    """A kept run (docs/results/*.json) holding only its validation rows."""
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"validation": rows}))
    return path


def test_curve_is_sorted_by_step_and_skips_rows_without_the_metric(tmp_path):
    path = kept(tmp_path, [{"step": 799, METRIC: 0.02}, {"step": 399, METRIC: 0.01}, {"step": 100, "x": 1}])
    assert plot_curves.curve(path, METRIC) == [(399, 0.01), (799, 0.02)]


def test_a_run_without_the_metric_names_the_file(tmp_path):
    path = kept(tmp_path, [{"step": 399, "val/direct/hr@10": 0.2}])
    with pytest.raises(SystemExit, match=re.escape(str(path))):
        plot_curves.curve(path, METRIC)


def test_each_run_gets_its_own_colour_and_its_best_value_in_the_legend():
    curves = {f"run {i}": [(0, 0.01 * i), (10, 0.01 * i + 0.005)] for i in range(7)}
    chart = plot_curves.svg(curves, METRIC)
    legend = re.findall(r'fill="(#[0-9a-f]{6})">(run \d) \(best ([0-9.]+)\)', chart)
    assert [name for _, name, _ in legend] == list(curves)
    assert len({colour for colour, _, _ in legend}) == 7
    assert legend[3][2] == "0.0350"
