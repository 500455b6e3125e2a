"""scripts/keep_result.py keeps a run's validation curve, commands and test metrics in one JSON file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

keep_result = load_script("scripts/keep_result.py")

CSV = """epoch,lr-AdamW,step,train/loss,val/sequential/hr@10
0,0.001,49,7.5,
2,,399,,0.0412
2,,399,6.1,
5,,799,,0.0600
"""


def logs(tmp_path: Path) -> Path:
    """A fit's CSVLogger folder: training rows and validation rows interleaved, as Lightning writes them."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(CSV)
    return tmp_path / "logs"


def test_validation_curve_keeps_step_epoch_and_val_metrics_of_validation_rows_only(tmp_path):
    assert keep_result.validation_curve(logs(tmp_path)) == [
        {"step": 399, "epoch": 2, "val/sequential/hr@10": 0.0412},
        {"step": 799, "epoch": 5, "val/sequential/hr@10": 0.06}]


def run(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["keep_result.py", *argv])
    keep_result.main()


def test_kept_file_holds_commands_wall_times_curve_and_test_metrics(tmp_path, monkeypatch):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"metrics": {"test/sequential/hr@10": 0.05}}))
    out = tmp_path / "kept.json"
    run(monkeypatch, str(out), "--validation", str(logs(tmp_path)), "--fit", "recsys-lightning fit x",
        "--fit-seconds", "12", "--results", str(results), "--test", "recsys-lightning test x", "--test-seconds", "3")
    kept = json.loads(out.read_text())
    assert kept["commands"] == {"fit": "recsys-lightning fit x", "test": "recsys-lightning test x"}
    assert kept["wall_seconds"] == {"fit": 12, "test": 3}
    assert kept["metrics"] == {"test/sequential/hr@10": 0.05}
    assert [row["epoch"] for row in kept["validation"]] == [2, 5]


def test_results_without_the_test_command_is_refused(tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        run(monkeypatch, str(tmp_path / "kept.json"), "--validation", str(logs(tmp_path)), "--fit", "f",
            "--fit-seconds", "1", "--results", str(tmp_path / "results.json"))
    assert not (tmp_path / "kept.json").exists()
