"""Callbacks every run gets: the results file of a test run, the JSON-lines file of a predict run, and the
checkpoint callback whose `last.ckpt` is the latest state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import yaml
from rich.console import Console
from rich.table import Table
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint


def run_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


class LatestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` is rewritten at every save point and at the end of fit. Lightning 2.6
    rewrites it only when a top-k checkpoint is saved, so a resume from it would drop the steps after the best one."""

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, so checkpoints written before this class resume with their best score."""
        return ModelCheckpoint.__qualname__ + super().state_key.removeprefix(type(self).__qualname__)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_latest(trainer)

    def _save_latest(self, trainer: L.Trainer) -> None:
        """Write `last.ckpt` unless this step already saved a checkpoint (then `last.ckpt` is current)."""
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class ResultsWriter(Callback):
    """Writes `results.json` into the log directory after a test run: metrics per family, config, data, checkpoint."""

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = run_dir(trainer)  # on every rank: `trainer.log_dir` broadcasts from rank 0
        if not trainer.is_global_zero:
            return
        metrics: dict[str, dict[str, float]] = {}
        for key, value in sorted(trainer.callback_metrics.items()):
            stage, family, name = key.split("/", 2) if key.count("/") >= 2 else ("", "", key)
            if stage == "test":
                metrics.setdefault(family, {})[name] = round(float(value), 6)
        config_file = out / "config.yaml"
        results: dict[str, Any] = {
            "metrics": metrics,
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "dataset": trainer.datamodule.stats() if trainer.datamodule is not None else None,
            "config": yaml.safe_load(config_file.read_text()) if config_file.is_file() else dict(pl_module.hparams),
        }
        out.mkdir(parents=True, exist_ok=True)
        path = out / "results.json"
        path.write_text(json.dumps(results, indent=2, default=str))
        print_metrics(metrics)
        print(f"results: {path}")


def print_metrics(metrics: dict[str, dict[str, float]]) -> None:
    """One row per family and metric, seen and unseen templates side by side."""
    table = Table(title="test metrics")
    for column in ("family", "metric", "seen templates", "unseen templates"):
        table.add_column(column)
    for family, values in metrics.items():
        for name, value in values.items():
            if not name.startswith("unseen/"):
                unseen = values.get(f"unseen/{name}")
                table.add_row(family, name, f"{value:.4f}", "-" if unseen is None else f"{unseen:.4f}")
    Console(width=120).print(table)


class PredictionWriter(BasePredictionWriter):
    """Streams each request's answer as one JSON line to `predictions.jsonl` (per rank beyond rank 0)."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.path: Path | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resolved once, on every rank: `trainer.log_dir` broadcasts from rank 0, and ranks predict unequal batches.
        suffix = "" if trainer.global_rank == 0 else f".rank{trainer.global_rank}"
        self.path = run_dir(trainer) / f"predictions{suffix}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Sequence[dict],
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        assert self.path is not None
        with self.path.open("a") as f:
            for answer in prediction:
                f.write(json.dumps(answer) + "\n")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print(f"predictions: {self.path}")
