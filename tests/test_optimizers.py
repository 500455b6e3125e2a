"""LightningCLI's --optimizer / --lr_scheduler on RecSysLLM: the given classes get the module's parameter groups (weight
decay on matrices only), and the module's warm-up schedule applies when no --lr_scheduler is given."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from recsys_lightning.cli import main
from tests.conftest import ONE_EPOCH, REPO, SEQUENTIAL_ONLY

STEPS = 4
TINY = ["--model.backbone.init_args.hidden_size", "32", "--model.backbone.init_args.num_layers", "1",
        "--model.backbone.init_args.num_attention_heads", "2", "--data.vocab_size", "300", "--data.batch_size", "8",
        "--model.beam_size", "5", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(STEPS),
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--model.warmup_steps", "50",
        "--model.schedule", "cosine", "--model.weight_decay", "0.05", *ONE_EPOCH, *SEQUENTIAL_ONLY]


class RecordOptimizer(L.Callback):
    """Writes the fitted optimizer, its groups and schedule, and those the module builds by default, to `path`."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    @staticmethod
    def groups(optimizer: torch.optim.Optimizer) -> list[dict]:
        return [{"params": len(g["params"]), "weight_decay": g["weight_decay"], "lr": g["lr"]}
                for g in optimizer.param_groups]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizer, config = trainer.optimizers[0], trainer.lr_scheduler_configs[0]
        pl_module.make_optimizer = pl_module.make_lr_scheduler = None
        default = pl_module.configure_optimizers()["optimizer"]
        self.path.write_text(json.dumps({
            "optimizer": type(optimizer).__name__, "groups": self.groups(optimizer), "steps": trainer.global_step,
            "scheduler": type(config.scheduler).__name__, "interval": config.interval,
            "default": type(default).__name__, "default_groups": self.groups(default)}))


def fit(tmp_path: Path, root: Path, *extra: str) -> dict:
    record = tmp_path / "optimizer.json"
    main(["fit", "--config", str(REPO / "lightning_configs" / "demo.yaml"), *TINY, "--data.root", str(root),
          "--trainer.default_root_dir", str(tmp_path), "--data.cache_dir", str(tmp_path / "cache"),
          "--trainer.callbacks+=tests.test_optimizers.RecordOptimizer", "--trainer.callbacks.path", str(record),
          *extra])
    return json.loads(record.read_text())


def test_a_given_optimizer_gets_the_modules_groups_under_its_warmup_schedule(tmp_path, tiny_reviews):
    got = fit(tmp_path, tiny_reviews, "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.01",
              "--optimizer.momentum", "0.9")
    assert got["optimizer"] == "SGD" and got["default"] == "AdamW" and 2 <= got["steps"] <= STEPS
    shape = lambda groups: [(g["params"], g["weight_decay"]) for g in groups]  # noqa: E731
    assert shape(got["groups"]) == shape(got["default_groups"]) and [g["weight_decay"] for g in got["groups"]] == \
        [0.05, 0.0] and all(g["params"] > 0 for g in got["groups"])
    # the module's linear warm-up (50 steps) scaled SGD's lr, step by step
    assert got["scheduler"] == "LambdaLR" and got["interval"] == "step"
    assert [g["lr"] for g in got["groups"]] == pytest.approx([0.01 * got["steps"] / 50] * 2)


def test_a_given_lr_scheduler_replaces_the_modules_schedule(tmp_path, tiny_reviews):
    got = fit(tmp_path, tiny_reviews, "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.01", "--lr_scheduler",
              "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5")
    assert got["optimizer"] == "SGD" and got["scheduler"] == "StepLR" and got["interval"] == "epoch"
    assert [g["lr"] for g in got["groups"]] == pytest.approx([0.005, 0.005])  # halved once, after the one epoch
    assert [g["weight_decay"] for g in got["groups"]] == [0.05, 0.0]
