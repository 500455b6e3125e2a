"""scripts/prior_sweep.sh validates each transition-prior weight and tests at the best validation NDCG@10."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prior_sweep.sh"
TASKS = "[{name: sequential, options: {transition_prior: PRIOR}}]"

# A stand-in for recsys-lightning: logs each call, prints validation NDCG@10 from a table keyed by the weight.
FAKE_CLI = """#!/usr/bin/env bash
echo "$*" >> "{log}"
weight=$(echo "${@: -1}" | sed 's/.*transition_prior: \\([0-9.]*\\).*/\\1/')
case "$1:$weight" in
  validate:0) echo "│ val/sequential/ndcg@10 │ 0.050 │" ;;
  validate:1) echo "│ val/sequential/ndcg@10 │ 0.070 │" ;;
  validate:2) echo "│ val/sequential/ndcg@10 │ 0.065 │" ;;
  validate:9) echo "boom: bad checkpoint" >&2; exit 3 ;;
  validate:*) echo "no table" ;;
  test:*) echo "tested at $weight" ;;
esac
"""


def sweep(tmp_path: Path, weights: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / "calls.log"
    cli = tmp_path / "cli"
    cli.write_text(FAKE_CLI.replace("{log}", str(log)))
    cli.chmod(0o755)
    done = subprocess.run(["bash", str(SCRIPT), weights, TASKS, "--ckpt_path", "best.ckpt"], capture_output=True,
                          text=True, env={**os.environ, "CLI": str(cli)})
    return done, log.read_text().splitlines() if log.exists() else []


def test_the_weight_of_the_best_validation_ndcg_is_tested(tmp_path):
    done, calls = sweep(tmp_path, "0 1 2")
    assert done.returncode == 0, done.stderr
    assert "PRIOR 1 VAL_NDCG10 0.070" in done.stdout and "CHOSEN 1" in done.stdout
    assert done.stdout.strip().endswith("tested at 1")
    assert calls[-1] == "test --ckpt_path best.ckpt --data.tasks [{name: sequential, options: {transition_prior: 1}}]"


@pytest.mark.parametrize(("weights", "message"), [("0 9", "boom: bad checkpoint"),
                                                  ("0 5", "no val/sequential/ndcg@10 in the validate output at weight 5")])
def test_a_failed_or_unreadable_validation_stops_before_any_test(tmp_path, weights, message):
    done, calls = sweep(tmp_path, weights)
    assert done.returncode != 0 and message in done.stderr
    assert not [c for c in calls if c.startswith("test")]
