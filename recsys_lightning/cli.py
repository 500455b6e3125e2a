"""`recsys-lightning`: a LightningCLI (fit, validate, test, predict) plus `tasks`, `prepare` and `export`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import datasets
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer

from recsys_lightning.callbacks import LatestCheckpoint, PredictionWriter, ResultsWriter, TrainingRandomState
from recsys_lightning.checkpoint_io import with_atomic_checkpoints
from recsys_lightning.pipeline.datamodule import RecDataModule
from recsys_lightning.pipeline.prepare import prepare
from recsys_lightning.infilling.tokenizer import wrap_tokenizer
from recsys_lightning.model.export import export
from recsys_lightning.errors import CheckpointError, checkpoint_file, read_checkpoint
from recsys_lightning.report import report_errors
from recsys_lightning.module import RecSysLLM, check_fingerprint, dataset_fingerprint
from recsys_lightning.registry import discover


class RecSysCLI(LightningCLI):
    """LightningCLI with a configurable checkpoint callback that keeps `last.ckpt` at the latest state."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(LatestCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._args = args  # kept to parse again once a checkpoint's hyperparameters are the defaults
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """The checkpoint's saved model hyperparameters become defaults under the config files and command line.
        Lightning's own merge puts them on top, silently undoing e.g. `test --model.score_end false`."""
        subcommand = self.config.get("subcommand")
        ckpt = given_checkpoint(self.config[subcommand].get("ckpt_path")) if subcommand else None
        if ckpt is None:
            return
        saved = read_checkpoint(ckpt)  # a missing, truncated or corrupt file stops here, named
        if ckpt.is_dir():
            return
        saved = saved.get("hyper_parameters") or {}
        saved = {f"model.{key}": value for key, value in saved.items() if not key.startswith("_")}
        if saved:
            self._subcommand_parsers[subcommand].set_defaults(saved)
            super().parse_arguments(self.parser, self._args)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """As LightningCLI's, but `--trainer.enable_progress_bar false` also drops the default RichProgressBar, and
        checkpoints are written atomically (checkpoint_io.AtomicCheckpointIO) unless a CheckpointIO is configured."""
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("enable_progress_bar") is False:
            callbacks = [c for c in self.trainer_defaults["callbacks"] if not isinstance(c, ProgressBar)]
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": callbacks}
        kwargs.setdefault("plugins", with_atomic_checkpoints(trainer.get("plugins"), trainer.get("strategy")))
        return super().instantiate_trainer(**kwargs)

    def _before_evaluation(self) -> None:
        """Load checkpoints weights-only, and decode with the tokenizer the checkpoint was trained with."""
        config = self.config_init[self.subcommand]
        self.model.check_settings(self.datamodule)
        if config.get("weights_only") is None:
            config["weights_only"] = True
        if self.subcommand == "test":
            config["verbose"] = False  # ResultsWriter prints one table, seen and unseen side by side
        ckpt = given_checkpoint(config.get("ckpt_path"))
        if ckpt is None:
            return
        meta = read_checkpoint(ckpt)  # a sharded (FSDP2) checkpoint keeps everything but tensors in meta.pt
        backbone_tokenizer = self.model.backbone.tokenizer()
        saved = meta.get("tokenizer")
        if backbone_tokenizer is None and isinstance(saved, str) and saved.startswith("{"):
            self.datamodule.use_tokenizer(wrap_tokenizer(Tokenizer.from_str(saved)))
        if isinstance(meta.get("dataset"), dict):
            # the data the checkpoint was trained on must be the configured data: compared on the dataset and the
            # tokenizer alone, before any example is built (the data module reads them once either way)
            if backbone_tokenizer is not None and self.datamodule.tokenizer is None:
                self.datamodule.use_tokenizer(backbone_tokenizer)
            self.datamodule.load()
            check_fingerprint(meta["dataset"], dataset_fingerprint(self.datamodule), f"--ckpt_path {ckpt}")

    def before_fit(self) -> None:
        self._keep_earlier_checkpoints()
        self._before_evaluation()

    def _keep_earlier_checkpoints(self) -> None:
        """A fit that does not resume must not overwrite (or version around) the checkpoints of an earlier run.
        A requeued SLURM job resumes without --ckpt_path, from the hpc checkpoint Lightning wrote in the root dir."""
        requeued = SLURMEnvironment.detect() and any(Path(self.trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"))
        if self.config_init[self.subcommand].get("ckpt_path") or requeued:
            return
        callback = self.trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
        earlier = sorted(p.name for p in folder.iterdir() if p.suffix == ".ckpt") if folder and folder.is_dir() else []
        if earlier:
            resume = folder / ("last.ckpt" if "last.ckpt" in earlier else earlier[0])
            raise ValueError(f"checkpoint.dirpath {folder} already holds {', '.join(earlier)} from an earlier fit: "
                             f"resume it with --ckpt_path {resume}, give this run its own folder "
                             "(--checkpoint.dirpath, or --trainer.default_root_dir with the logger's save_dir), "
                             "or move the earlier checkpoints away")

    before_validate = before_test = before_predict = _before_evaluation


LIGHTNING_CHECKPOINTS = ("last", "best", "hpc")  # names Lightning resolves itself


def given_checkpoint(value: Any) -> Path | None:
    """The checkpoint path given with --ckpt_path (None when none is, or it is a name Lightning resolves); one
    that does not exist is an error before any work."""
    if not value or str(value) in LIGHTNING_CHECKPOINTS or str(value).startswith("registry"):
        return None
    path = Path(value)
    if not checkpoint_file(path).is_file():
        raise CheckpointError(f"--ckpt_path {value}: no such checkpoint file")
    return path


def list_tasks(argv: Sequence[str]) -> None:
    """Print every registered task family: name, source file, seen/unseen template counts, metrics."""
    parser = argparse.ArgumentParser(prog="recsys-lightning tasks", description=list_tasks.__doc__)
    parser.add_argument("--task_dirs", nargs="*", default=[], help="extra folders of task family files")
    args = parser.parse_args(argv)
    table = Table(title="task families")
    for column in ("name", "source", "seen", "unseen", "metrics"):
        table.add_column(column)
    for name, cls in sorted(discover(args.task_dirs).items()):
        family = cls()
        table.add_row(name, cls.source, str(len(family.prompts.seen)), str(len(family.prompts.unseen)),
                      ", ".join(family.metric_names()))
    Console(width=200).print(table)


def export_checkpoint(argv: Sequence[str]) -> None:
    """Export a fit checkpoint: merged safetensors + tokenizer + backbone.yaml, and the LoRA adapter alone."""
    parser = argparse.ArgumentParser(prog="recsys-lightning export", description=export_checkpoint.__doc__)
    parser.add_argument("--ckpt_path", required=True, type=Path, help="a checkpoint written by `fit`")
    parser.add_argument("--out", required=True, type=Path, help="a new (or empty) folder to write")
    args = parser.parse_args(argv)
    for folder in export(args.ckpt_path, args.out):
        print(f"wrote {folder} (reload: --config {folder / 'backbone.yaml'})")


def main(argv: Sequence[str] | None = None) -> None:
    """Run a subcommand. The project's errors (bad data, settings, prompts, task registry, checkpoints) end it with
    one line `recsys-lightning: error: <message>` on stderr and exit status 2; RECSYS_LIGHTNING_DEBUG=1 shows their
    full traceback instead."""
    report_errors(lambda: _main(argv))


def _main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "tasks":
        list_tasks(args[1:])
        return
    if args and args[0] == "prepare":
        prepare(args[1:])
        return
    if args and args[0] == "export":
        export_checkpoint(args[1:])
        return
    datasets.disable_progress_bars()
    RecSysCLI(
        RecSysLLM,
        RecDataModule,
        args=None if argv is None else args,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
            "callbacks": [RichProgressBar(), LearningRateMonitor(logging_interval="step"), ResultsWriter(),
                          PredictionWriter(), TrainingRandomState()],
        },
    )


if __name__ == "__main__":
    main()
