"""Callbacks every run gets: the results file of a test run (also given to the run's loggers), the JSON-lines file of
a predict run, the checkpoint callback whose `last.ckpt` is the latest state, and the training steps' random stream
that checkpoints carry."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
import yaml
from rich.console import Console
from rich.table import Table
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger


def run_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


class LatestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` is rewritten at every save point and at the end of fit. Lightning 2.6
    rewrites it only when a top-k checkpoint is saved, so a resume from it would drop the steps after the best one;
    and with `every_n_train_steps` it writes nothing until the monitored metric exists (the first validation):
    here `last.ckpt` is written every N steps from step N, the best one once the metric exists."""

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, so checkpoints written before this class resume with their best score."""
        return ModelCheckpoint.__qualname__ + super().state_key.removeprefix(type(self).__qualname__)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self._every_n_train_steps
        if (n < 1 or trainer.global_step % n or self.save_last is not True or self.monitor is None
                or self._should_skip_saving_checkpoint(trainer) or self.monitor in self._monitor_candidates(trainer)):
            return
        # Lightning deferred this step's save to the first validation, which may be far off: write last.ckpt now,
        # leaving the deferred save to happen at that validation (it checks the step last saved).
        saved = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = saved

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


class TrainingRandomState(Callback):
    """One random stream per process for the training steps, carried by checkpoints, so a resumed run draws the same
    dropout masks as an uninterrupted one.

    Each training step starts from the global RNG states (torch CPU, CUDA, numpy, Python `random`) its predecessor
    ended with: what runs between steps (validation, a new epoch's dataloader iterator, which draws its base seed,
    the sanity check and model set-up of a resumed run) does not advance the stream. Checkpoints store every rank's
    states at the end of the last step; on resume each rank's first step starts from its own. With a different
    process count than the checkpoint's the states are not restored (exact resume needs the same count anyway).
    """

    def __init__(self) -> None:
        self.after_last_step: dict[str, Any] | None = None
        self.restored: dict[str, Any] | None = None  # states loaded from a checkpoint, this rank's

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        state = self.after_last_step or self.restored
        if state is not None:
            set_rng_states(state)
        self.restored = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.after_last_step = rng_states()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.after_last_step = None  # a new fit: start from the restored states or the seeded ones

    def state_dict(self) -> dict[str, Any]:
        """Every rank's states (a collective: checkpoints are dumped on every rank), in rank order."""
        state = self.after_last_step or self.restored
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
        else:
            states = [state]
        return {"ranks": states} if all(s is not None for s in states) else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks") or []
        world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() \
            else (1, 0)
        self.restored = ranks[rank] if len(ranks) == world else None


def rng_states() -> dict[str, Any]:
    """The global RNG states as types `torch.load(weights_only=True)` reads back (tensors, ints, lists, tuples)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class ResultsWriter(Callback):
    """Writes `results.json` into the log directory after a test run: metrics per family, config, data, checkpoint;
    and gives the metric table and the file to the run's loggers (`log_results`)."""

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
        for logger in trainer.loggers:
            log_results(logger, metrics, results, path, trainer.global_step)
        print(f"results: {path}")


COLUMNS = ["family", "metric", "seen templates", "unseen templates"]


def metric_rows(metrics: dict[str, dict[str, float]]) -> list[list[str]]:
    """One row per family and metric, seen and unseen templates side by side."""
    rows = []
    for family, values in metrics.items():
        for name, value in values.items():
            if not name.startswith("unseen/"):
                unseen = values.get(f"unseen/{name}")
                rows.append([family, name, f"{value:.4f}", "-" if unseen is None else f"{unseen:.4f}"])
    return rows


def print_metrics(metrics: dict[str, dict[str, float]]) -> None:
    table = Table(title="test metrics")
    for column in COLUMNS:
        table.add_column(column)
    for row in metric_rows(metrics):
        table.add_row(*row)
    Console(width=120).print(table)


def markdown_table(metrics: dict[str, dict[str, float]]) -> str:
    """The metric table in Markdown, as TensorBoard's text tab and MLflow render it."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in metric_rows(metrics)])


def log_results(logger: Logger, metrics: dict[str, dict[str, float]], results: dict[str, Any], path: Path,
                step: int) -> None:
    """The test run's metric table and `results.json` in a logger's own form (the scalars are logged already, by
    Lightning): TensorBoard text, a W&B table and file, MLflow artifacts; a CSV logger's folder holds the file;
    any other logger gets the checkpoint and dataset statistics as hyperparameters."""
    table = markdown_table(metrics)
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_text("test/metrics", table, global_step=step)
        logger.experiment.add_text("test/results", f"```\n{json.dumps(results, indent=2, default=str)}\n```",
                                   global_step=step)
        logger.experiment.flush()
    elif isinstance(logger, WandbLogger):
        logger.log_table(key="test/metrics", columns=COLUMNS, data=metric_rows(metrics))
        logger.experiment.save(str(path), base_path=str(path.parent), policy="now")
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_text(logger.run_id, table, "test_metrics.md")
        logger.experiment.log_artifact(logger.run_id, str(path))
    elif not isinstance(logger, CSVLogger):
        logger.log_hyperparams({"test_results": {"file": str(path), "checkpoint": results["checkpoint"],
                                                 "dataset": results["dataset"]}})
        logger.save()


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
