"""LatestCheckpoint through the real CLI: `last.ckpt` follows training when the monitored metric stops improving."""

from __future__ import annotations

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
