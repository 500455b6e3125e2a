"""`recsys-lightning prepare --config X`: read the dataset, build every family's examples (all splits and
template streams) into the cache, and print the statistics as one JSON object on the last output line.

It reads the same YAML as `fit`: the `data` section, and `model.backbone` only to tokenize with the tokenizer a
pretrained backbone brings (as `fit` does); `trainer` and `checkpoint` are accepted and ignored. `--data.root PATH`
and any other override work as they do there.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional, Sequence

import datasets
from jsonargparse import ActionConfigFile, ArgumentParser

from recsys_lightning.pipeline.datamodule import RecDataModule
from recsys_lightning.module import RecSysLLM

IGNORED_SECTIONS = ("trainer", "checkpoint", "optimizer", "lr_scheduler")


def build_parser() -> ArgumentParser:
    """The `data` and `model` sections of a training config, plus the other sections accepted as opaque values."""
    parser = ArgumentParser(prog="recsys-lightning prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a training config (YAML)")
    parser.add_class_arguments(RecDataModule, "data")
    parser.add_class_arguments(RecSysLLM, "model")
    for section in IGNORED_SECTIONS:
        parser.add_argument(f"--{section}", type=Optional[dict], default=None, help="ignored by prepare")
    parser.add_argument("--seed_everything", type=Any, default=None, help="ignored by prepare")
    parser.add_argument("--ckpt_path", type=Optional[str], default=None, help="ignored by prepare")
    return parser


def prepare(argv: Sequence[str]) -> dict[str, Any]:
    """Build the cache for the configured dataset and families; return (and print last) the statistics."""
    parser = build_parser()
    config = parser.parse_args(list(argv))
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    datasets.disable_progress_bars()
    start = time.perf_counter()
    built = instantiate(config)  # errors (bad data, task, option, template) end main() with one line
    module: RecDataModule = built.data
    built.model.check_settings(module)
    backbone_tokenizer = built.model.backbone.tokenizer()
    if backbone_tokenizer is not None:
        module.use_tokenizer(backbone_tokenizer)
    for stage in ("fit", "test"):
        module.setup(stage)
    stats = {**module.stats(), "cache": str(module.cache.folder) if module.cache else None,
             "seconds": round(time.perf_counter() - start, 2)}
    print(json.dumps(stats), flush=True)
    return stats
