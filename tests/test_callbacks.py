"""Through the real CLI: LatestCheckpoint's `last.ckpt` follows training when the monitored metric stops improving,
and is written every N steps from step N, before the monitored metric exists; ResultsWriter gives the test run's
metric table and results.json to every logger (TensorBoard, MLflow, W&B, any other)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger

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


class RecordingLogger(Logger):
    """A logger of no kind ResultsWriter knows: records the hyperparameters it is given."""

    hyperparams: list[dict] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        type(self).hyperparams.append(dict(params) if isinstance(params, dict) else {})


def test_the_test_metric_table_and_results_reach_tensorboard_and_any_other_logger(tmp_path, tiny_reviews):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY)
    RecordingLogger.hyperparams = []
    out = run("test", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"),
              "--trainer.logger+=tests.test_callbacks.RecordingLogger")
    results = json.loads((out / "results.json").read_text())
    events = EventAccumulator(str(out), size_guidance={"tensors": 0})  # the TensorBoard files beside metrics.csv
    events.Reload()
    assert (out / "metrics.csv").is_file() and "test/sequential/hr@10" in events.Tags()["scalars"]
    table = events.Tensors("test/metrics/text_summary")[0].tensor_proto.string_val[0].decode()
    seq = results["metrics"]["sequential"]
    assert f"| sequential | hr@10 | {seq['hr@10']:.4f} | {seq['unseen/hr@10']:.4f} |" in table
    given = [p["test_results"] for p in RecordingLogger.hyperparams if "test_results" in p]
    assert given == [{"file": str(out / "results.json"), "checkpoint": results["checkpoint"],
                      "dataset": results["dataset"]}]


def test_the_mlflow_overlay_logs_the_test_table_and_results_json_into_a_local_store(tmp_path, tiny_reviews):
    mlflow = pytest.importorskip("mlflow")  # the `mlflow` extra
    run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, "--config", "loggers/mlflow")
    run("test", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, "--config", "loggers/mlflow", "--ckpt_path",
        str(tmp_path / "ckpt" / "last.ckpt"))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")  # <default_root_dir>/mlflow.db
    runs = client.search_runs([client.get_experiment_by_name("recsys-lightning").experiment_id],
                              order_by=["attributes.start_time DESC"])
    assert len(runs) == 2 and any(key.startswith("test/sequential/") for key in runs[0].data.metrics)
    artifacts = tmp_path / "mlartifacts"
    assert sorted(p.name for p in artifacts.rglob("*.*")) == ["results.json", "test_metrics.md"]


def test_the_wandb_overlay_logs_the_test_table_and_results_json_offline(tmp_path, tiny_reviews, monkeypatch):
    wandb = pytest.importorskip("wandb")  # the `wandb` extra
    monkeypatch.setenv("WANDB_SILENT", "true")
    offline = ("--config", "loggers/wandb", "--trainer.logger.init_args.offline", "true")  # the last logger: W&B
    run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, *offline)
    wandb.finish()  # as the fit's process would at its exit: the test run is a run of its own
    run("test", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, *offline, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"))
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))  # <default_root_dir>/wandb
    assert len(runs) == 2 and list(runs[-1].rglob("results.json"))
    wandb.finish()
    assert list(runs[-1].rglob("*test/metrics*.table.json"))
