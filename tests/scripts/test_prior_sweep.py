"""scripts/prior_sweep.sh validates each transition-prior setting and tests at the best validation NDCG@10."""

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
  validate:3) echo "│ val/sequential/ndcg@10 │ 0.080 │" ;;
  validate:9) echo "boom: bad checkpoint" >&2; exit 3 ;;
  validate:*) echo "no table" ;;
  test:*) echo "tested at $weight" ;;
esac
"""


def sweep(tmp_path: Path, weights: str, tasks: str = TASKS) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / "calls.log"
    cli = tmp_path / "cli"
    cli.write_text(FAKE_CLI.replace("{log}", str(log)))
    cli.chmod(0o755)
    done = subprocess.run(["bash", str(SCRIPT), weights, tasks, "--ckpt_path", "best.ckpt"], capture_output=True,
                          text=True, env={**os.environ, "CLI": str(cli)})
    return done, log.read_text().splitlines() if log.exists() else []


def test_the_weight_of_the_best_validation_ndcg_is_tested(tmp_path):
    done, calls = sweep(tmp_path, "0 1 2")
    assert done.returncode == 0, done.stderr
    assert "PRIOR 1 VAL_NDCG10 0.070" in done.stdout and "CHOSEN 1" in done.stdout
    assert done.stdout.strip().endswith("tested at 1")
    assert calls[-1] == "test --ckpt_path best.ckpt --data.tasks [{name: sequential, options: {transition_prior: 1}}]"


CONTEXT_TASKS = "[{name: sequential, options: {transition_prior: PRIOR, prior_context: CONTEXT, prior_decay: DECAY}}]"
WINDOW_TASKS = CONTEXT_TASKS.replace("}}]", ", prior_window: WINDOW}}]")


@pytest.mark.parametrize(("settings", "tasks", "chosen", "tested_options"), [
    ("1:1:1 3:5:0.3 2:3:0.5", CONTEXT_TASKS, "3:5:0.3", "transition_prior: 3, prior_context: 5, prior_decay: 0.3"),
    ("1:1:1:1 3:5:0.3:2", WINDOW_TASKS, "3:5:0.3:2",
     "transition_prior: 3, prior_context: 5, prior_decay: 0.3, prior_window: 2")])
def test_settings_fill_the_context_decay_and_window_placeholders(tmp_path, settings, tasks, chosen, tested_options):
    done, calls = sweep(tmp_path, settings, tasks)
    assert done.returncode == 0, done.stderr
    assert f"PRIOR {chosen} VAL_NDCG10 0.080" in done.stdout and f"CHOSEN {chosen}" in done.stdout
    assert calls[-1] == f"test --ckpt_path best.ckpt --data.tasks [{{name: sequential, options: {{{tested_options}}}}}]"


@pytest.mark.parametrize(("weights", "tasks", "message"), [
    ("0 9", TASKS, "boom: bad checkpoint"),
    ("0 5", TASKS, "no val/sequential/ndcg@10 in the validate output at 5"),
    ("1:1:1 0:1", CONTEXT_TASKS, "setting 0:1 leaves DECAY unfilled in the tasks")])
def test_a_failed_or_unreadable_validation_stops_before_any_test(tmp_path, weights, tasks, message):
    done, calls = sweep(tmp_path, weights, tasks)
    assert done.returncode != 0 and message in done.stderr
    assert not [c for c in calls if c.startswith("test")]
