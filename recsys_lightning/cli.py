"""`recsys-lightning`: a LightningCLI (fit, validate, test, predict) plus `tasks`, `prepare`, `export`, `configs`,
`serve` and `plan`, dispatched from one table; `--config NAME` finds a shipped config by name."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from functools import partial
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import datasets
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple, instantiate_class
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer
from torch.optim import Optimizer

from recsys_lightning.builtin import builtin_dir
from recsys_lightning.callbacks import LatestCheckpoint, PredictionWriter, ResultsWriter, TrainingRandomState
from recsys_lightning.checkpoint_io import with_atomic_checkpoints
from recsys_lightning.pipeline.datamodule import RecDataModule
from recsys_lightning.pipeline.prepare import prepare
from recsys_lightning.infilling.tokenizer import wrap_tokenizer
from recsys_lightning.errors import CheckpointError, checkpoint_file, read_checkpoint
from recsys_lightning.memory import Setup, as_dict, describe, meta_network, plan
from recsys_lightning.report import report_errors
from recsys_lightning.module import RecSysLLM, check_fingerprint, dataset_fingerprint
from recsys_lightning.recommender import export_recommender
from recsys_lightning.registry import discover


ROOT_DIR = "${trainer.default_root_dir}"  # in a logger's arguments or checkpoint.dirpath: the run's root folder
# TensorBoard event files and metrics.csv side by side in <default_root_dir>/logs/version_N (CSV first: it is
# trainer.log_dir, and it finds the folder empty)
DEFAULT_LOGGERS = [{"class_path": f"lightning.pytorch.loggers.{name}",
                    "init_args": {"save_dir": ROOT_DIR, "name": "logs"}} for name in ("CSVLogger", "TensorBoardLogger")]


class RecSysCLI(LightningCLI):
    """LightningCLI with a configurable checkpoint callback that keeps `last.ckpt` at the latest state, and run
    folders under `trainer.default_root_dir`: checkpoints in `<root>/checkpoints` unless `checkpoint.dirpath` is
    set (null: the first logger's version folder, as Lightning does), logs wherever a logger's save_dir says."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_optimizer_args((Optimizer,))  # --optimizer, --lr_scheduler: see _add_configure_optimizers_...
        parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
        parser.add_lightning_class_args(LatestCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.dirpath": f"{ROOT_DIR}/checkpoints"})

    def before_instantiate_classes(self) -> None:
        resolve_root_dir(self.config[self.subcommand] if self.subcommand else self.config)

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """`--optimizer` / `--lr_scheduler` are built by `RecSysLLM.configure_optimizers`, over its parameter groups
        (weight decay on matrices only), its warm-up schedule kept when no `--lr_scheduler` is given. LightningCLI's
        own method (off: `auto_configure_optimizers=False`) would build them over `model.parameters()`, which are
        empty before `configure_model`, and replace the module's method."""
        optimizer, scheduler = self._get(self.config_init, "optimizer"), self._get(self.config_init, "lr_scheduler")
        if optimizer:
            self.model.make_optimizer = partial(instantiate_class, init=optimizer)
        if scheduler:
            self.model.make_lr_scheduler = partial(instantiate_class, init=scheduler)

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
        trainer = super().instantiate_trainer(**kwargs)
        share_run_folder(trainer.loggers)
        return trainer

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
        if isinstance(meta.get("hyper_parameters"), dict):
            check_lora(meta["hyper_parameters"].get("lora"), self.model.lora, f"--ckpt_path {ckpt}")
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
                             "(--trainer.default_root_dir, or --checkpoint.dirpath), "
                             "or move the earlier checkpoints away")

    before_validate = before_test = before_predict = _before_evaluation


def resolve_root_dir(config: Any) -> None:
    """`${trainer.default_root_dir}` in a logger's arguments (save_dir, a tracking URI) and in checkpoint.dirpath
    becomes the run's root folder (the working directory when unset, as in Lightning): `--trainer.default_root_dir
    X` moves logs and checkpoints."""
    root = str(config.trainer.get("default_root_dir") or os.getcwd())
    loggers = config.trainer.get("logger")
    for spec in loggers if isinstance(loggers, list) else [loggers]:
        init_args = spec.get("init_args") if hasattr(spec, "get") else None
        for key, value in list((init_args or {}).items()):
            if isinstance(value, str):
                init_args[key] = value.replace(ROOT_DIR, root)
    if isinstance(config.checkpoint.get("dirpath"), str):
        config.checkpoint["dirpath"] = config.checkpoint["dirpath"].replace(ROOT_DIR, root)


def share_run_folder(loggers: Sequence[Logger]) -> None:
    """TensorBoard and CSV loggers of one `<save_dir>/<name>` write into one version folder, the first one's: each
    alone would count the other's new folder and take the next version."""
    folders = [lg for lg in loggers if isinstance(lg, (CSVLogger, TensorBoardLogger))]
    for logger in folders[1:]:
        if logger.root_dir == folders[0].root_dir and logger._version is None:
            logger._version = folders[0].version


LIGHTNING_CHECKPOINTS = ("last", "best", "hpc")  # names Lightning resolves itself


def check_lora(saved: Any, configured: Any, where: str) -> None:
    """A checkpoint trained with LoRA needs the network built with LoRA, and one without it without: a config that
    says otherwise (the configured value wins over the checkpoint's) is refused before the weights fail to load."""
    if bool(saved) == (configured is not None):
        return
    wanted = f"--model.lora '{dict(saved)}'" if saved else "--model.lora null"
    raise CheckpointError(f"{where} was trained {'with' if saved else 'without'} LoRA but the configured model.lora "
                          f"is {'null' if configured is None else 'set'}; pass {wanted} (or the configs it was "
                          f"trained with)")


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
    """Export a fit checkpoint: merged safetensors + tokenizer + backbone.yaml, the LoRA adapter alone, and the
    catalog, prompts and settings `Recommender.from_pretrained` needs (no dataset)."""
    parser = argparse.ArgumentParser(prog="recsys-lightning export", description=export_checkpoint.__doc__)
    parser.add_argument("--ckpt_path", required=True, type=Path, help="a checkpoint written by `fit`")
    parser.add_argument("--out", required=True, type=Path, help="a new (or empty) folder to write")
    args = parser.parse_args(argv)
    for folder in export_recommender(args.ckpt_path, args.out):
        print(f"wrote {folder} (reload: --config {folder / 'backbone.yaml'})")


def shipped_configs() -> dict[str, Path]:
    """Every shipped config by name: its path in `lightning_configs/` less `.yaml` (`demo`, `method/recsysllm`)."""
    root = builtin_dir("lightning_configs")
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.rglob("*.yaml"))}


def config_path(value: str) -> str:
    """A `--config` value: a file that exists, else the shipped config of that name (`demo`, `backbones/minilm`)."""
    if Path(value).exists():
        return value
    configs = shipped_configs()
    name = value.removesuffix(".yaml").removeprefix("lightning_configs/")
    if name in configs:
        return str(configs[name])
    close = difflib.get_close_matches(name, list(configs), n=5, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else "`recsys-lightning configs` lists them"
    raise FileNotFoundError(f"--config {value}: no such file, and no shipped config of that name ({hint})")


def resolve_config_names(args: Sequence[str]) -> list[str]:
    """`--config NAME` and `--config=NAME` with NAME a shipped config's name become its path; real paths win."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = config_path(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + config_path(arg.removeprefix("--config="))
    return out


def header(path: Path) -> str:
    """A config's first header line (its opening comment), or "" when it opens with none."""
    first = path.read_text().splitlines()[:1]
    return first[0].lstrip("#").strip() if first and first[0].startswith("#") else ""


def list_configs(argv: Sequence[str]) -> None:
    """Print every shipped config: the name `--config` takes, and the first line of its header."""
    parser = argparse.ArgumentParser(prog="recsys-lightning configs", description=list_configs.__doc__)
    parser.parse_args(argv)
    table = Table(title="shipped configs (--config NAME)")
    for column in ("name", "what"):
        table.add_column(column)
    for name, path in shipped_configs().items():
        table.add_row(name, header(path))
    Console(width=200).print(table)


def serve(argv: Sequence[str]) -> None:
    """Serve an exported recommender over HTTP (recsys_lightning/serve.py; needs the `serve` extra)."""
    try:
        from recsys_lightning.serve import serve_command
    except ImportError as err:
        raise ValueError(f"recsys-lightning serve needs the `serve` extra: pip install 'recsys-lightning[serve]' "
                         f"({err})") from None
    serve_command(list(argv))


class PlanCLI(RecSysCLI):
    """The fit command line parsed, only the model instantiated: no trainer, data or weights."""

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate(self.config)
        self.model = self._get(self.config_init, "model")


def strategy_name(strategy: Any) -> str:
    """single, ddp or fsdp2 from a config's trainer.strategy (a name, or a class_path)."""
    name = str(getattr(strategy, "class_path", strategy) or "auto")
    if name.endswith("FSDP2Strategy"):
        return "fsdp2"
    if name.lower().startswith("ddp") or name.endswith("DDPStrategy"):
        return "ddp"
    if name in ("auto", "single_device") or name.endswith("SingleDeviceStrategy"):
        return "single"
    raise ValueError(f"plan: trainer.strategy {name!r} is not planned; pass --strategy single, ddp or fsdp2")


def memory_plan(argv: Sequence[str]) -> None:
    """Print the per-device memory of a training step (parameters, gradients, AdamW states, activations) for the
    configs and overrides `fit` takes: the network is built on the meta device, nothing is loaded or trained."""
    parser = argparse.ArgumentParser(prog="recsys-lightning plan", description=memory_plan.__doc__,
                                     epilog="Every other argument is fit's: --config FILE ..., --model.*, --data.*.")
    parser.add_argument("--devices", type=int, help="data-parallel devices (default: trainer.devices, else 1)")
    parser.add_argument("--strategy", choices=["single", "ddp", "fsdp2"], help="default: from trainer.strategy")
    parser.add_argument("--batch_size", type=int, help="rows per device and step (default: data.batch_size)")
    parser.add_argument("--row_length", type=int, help="tokens per row (default: data.pack_length or max_length)")
    parser.add_argument("--vocab_size", type=int, help="tokenizer size (default: a checkpoint's config.json, "
                        "else data.vocab_size)")
    parser.add_argument("--targets", type=int, help="Part B tokens per device and step (default: a fraction)")
    parser.add_argument("--target_fraction", type=float, default=0.25, help="Part B share of the tokens (the "
                        "demo's packed sequential rows: 0.06; generated reviews and explanations: more)")
    parser.add_argument("--device_type", choices=["cuda", "cpu"], default="cuda", help="where the step runs")
    parser.add_argument("--json", action="store_true", help="print the components in bytes as one JSON line")
    args, rest = parser.parse_known_args(argv)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
        cli = PlanCLI(RecSysLLM, RecDataModule, args=resolve_config_names(rest), run=False,
                      auto_configure_optimizers=False, parser_kwargs={"prog": "recsys-lightning plan"})
    trainer, data, model = cli.config.trainer, cli.config.data, cli.model
    devices = args.devices or (trainer.devices if isinstance(trainer.devices, int) else 1)
    strategy = args.strategy or strategy_name(trainer.strategy)
    vocab = args.vocab_size or (None if getattr(model.backbone, "checkpoint", None) else data.vocab_size)
    setup = Setup(strategy=strategy, devices=devices if strategy != "single" else 1,
                  batch_size=args.batch_size or data.batch_size,
                  row_length=args.row_length or data.pack_length or data.max_length, targets=args.targets,
                  target_fraction=args.target_fraction, bf16_mixed=str(trainer.precision).startswith("bf16-mixed"),
                  device_type=args.device_type)
    result = plan(describe(meta_network(model.backbone, model.lora, vocab), model.lora), setup)
    print(json.dumps(as_dict(result)) if args.json else f"memory plan (projected, not measured)\n{result.table()}")


def fit_and_evaluate(argv: Sequence[str]) -> None:
    """The LightningCLI subcommands: fit, validate, test, predict."""
    datasets.disable_progress_bars()
    with warnings.catch_warnings():  # the arguments are sys.argv's, their config names resolved
        warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
        RecSysCLI(
            RecSysLLM,
            RecDataModule,
            args=list(argv),
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "recsys-lightning"},
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "logger": DEFAULT_LOGGERS,
                "callbacks": [RichProgressBar(), LearningRateMonitor(logging_interval="step"), ResultsWriter(),
                              PredictionWriter(), TrainingRandomState()],
            },
        )


LIGHTNING_SUBCOMMANDS = {
    "fit": "train a model (Lightning's fit loop), validating and checkpointing on the way",
    "validate": "run validation on a checkpoint",
    "test": "evaluate a checkpoint on the test split: metrics table and results.json",
    "predict": "write predictions.jsonl (top-k items per request) from a checkpoint",
}
# name -> (command taking the arguments after the name, one line for `recsys-lightning --help`)
COMMANDS: dict[str, tuple[Callable[[Sequence[str]], Any], str]] = {
    "tasks": (list_tasks, "list the registered task families: templates and metrics"),
    "prepare": (prepare, "build a config's example cache once and print dataset statistics"),
    "export": (export_checkpoint, "export a checkpoint: merged safetensors, tokenizer, LoRA adapter"),
    "configs": (list_configs, "list the shipped configs `--config NAME` takes"),
    "serve": (serve, "serve an exported recommender over HTTP (the `serve` extra)"),
    "plan": (memory_plan, "per-device memory of a training step: parameters, gradients, optimizer, activations"),
}


def print_help() -> None:
    """`recsys-lightning --help`: every subcommand with one line each."""
    lines = [f"usage: recsys-lightning {{{','.join([*LIGHTNING_SUBCOMMANDS, *COMMANDS])}}} ...", "",
             "Train a language model as a recommender (RecSysLLM) with PyTorch Lightning.", "", "subcommands:"]
    helps = {**LIGHTNING_SUBCOMMANDS, **{name: text for name, (_, text) in COMMANDS.items()}}
    lines += [f"  {name:<10}{text}" for name, text in helps.items()]
    lines += ["", "`recsys-lightning <subcommand> --help` gives each one's options; `--config NAME` takes a shipped "
              "config's name (`recsys-lightning configs`) or a path."]
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> None:
    """Run a subcommand. The project's errors (bad data, settings, prompts, task registry, checkpoints) end it with
    one line `recsys-lightning: error: <message>` on stderr and exit status 2; RECSYS_LIGHTNING_DEBUG=1 shows their
    full traceback instead."""
    report_errors(lambda: _main(argv))


def _main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print_help()
        return
    if args[0] in COMMANDS:
        command, _ = COMMANDS[args[0]]
        command(resolve_config_names(args[1:]) if args[0] == "prepare" else args[1:])
        return
    fit_and_evaluate(resolve_config_names(args))


if __name__ == "__main__":
    main()
