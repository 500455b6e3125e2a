"""LatestCheckpoint through the real CLI: `last.ckpt` follows training when the monitored metric stops improving,
and is written every N steps from step N, before the monitored metric exists."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import SEQUENTIAL_ONLY
from tests.test_cli import run

MID_EPOCH = ["--trainer.val_check_interval", "1", "--trainer.check_val_every_n_epoch", "null"]  # as the quality recipes
EPOCH_END = ["--trainer.max_epochs", "2"]


@pytest.mark.parametrize(("schedule", "expected"),
                         [(MID_EPOCH, {"best": 1, "last": 2}), (EPOCH_END, {"best": 2, "last": 4})],
                         ids=["validation-end", "epoch-end"])
def test_last_checkpoint_is_the_latest_state_when_the_best_is_earlier(tmp_path, tiny_reviews, schedule, expected):
    # `step` with mode min is best at the first save point only: Lightning alone would leave last.ckpt there
    run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, *schedule, "--checkpoint.monitor", "step",
        "--checkpoint.mode", "min")
    saved = {name: torch.load(tmp_path / "ckpt" / f"{name}.ckpt", weights_only=True, mmap=True)
             for name in ("best", "last")}
    assert {name: state["global_step"] for name, state in saved.items()} == expected
    # the state key ModelCheckpoint writes: checkpoints of either class resume with their best score
    assert [key.split("{")[0] for key in saved["last"]["callbacks"] if "monitor" in key] == ["ModelCheckpoint"]


class LastCheckpointSpy(L.Callback):
    """Records, before each training step, the step saved in `last.ckpt` and whether `best.ckpt` exists."""

    seen: list[tuple[int, int | None, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        folder = Path(trainer.checkpoint_callback.dirpath)
        last = folder / "last.ckpt"
        step = torch.load(last, weights_only=True, mmap=True)["global_step"] if last.is_file() else None
        type(self).seen.append((trainer.global_step, step, (folder / "best.ckpt").is_file()))


def test_every_n_train_steps_writes_last_from_step_n_before_the_monitored_metric_exists(tmp_path, tiny_reviews):
    LastCheckpointSpy.seen = []
    run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, "--trainer.max_steps", "10", "--trainer.max_epochs", "-1",
        "--trainer.limit_train_batches", "1.0", "--trainer.val_check_interval", "10",
        "--trainer.check_val_every_n_epoch", "null", "--trainer.limit_val_batches", "1",
        "--checkpoint.every_n_train_steps", "2", "--trainer.callbacks+=tests.test_callbacks.LastCheckpointSpy")
    # before step s runs, last.ckpt holds the latest even step; best.ckpt waits for the validation at step 10
    assert LastCheckpointSpy.seen == [(s, s - s % 2 or None, False) for s in range(10)]
    saved = {name: torch.load(tmp_path / "ckpt" / f"{name}.ckpt", weights_only=True, mmap=True)["global_step"]
             for name in ("best", "last")}
    assert saved == {"best": 10, "last": 10}
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best.ckpt", "last.ckpt"]  # no temp files
