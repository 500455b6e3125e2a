"""Shared fixtures: tiny tokenizers, models and datasets built locally in milliseconds."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from recsys_lightning.pipeline.datamodule import DEMO_ROOT
from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.infilling.tokenizer import train_tokenizer
from recsys_lightning.model.glm import GLMConfig, GLMModel

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
# CLI overrides that turn the five-family demo recipe into a seconds-long sequential-only run for tests.
ONE_EPOCH = ["--trainer.max_steps", "-1", "--trainer.max_epochs", "1", "--trainer.val_check_interval", "1.0",
             "--trainer.check_val_every_n_epoch", "1"]
SEQUENTIAL_ONLY = ["--data.tasks", '[{"name": "sequential"}]', "--checkpoint.monitor", "val/sequential/ndcg@10"]
CORPUS = ["user bought items in this order next item is great guitar strings and a tuner " + " ".join(map(str, range(100)))]


def load_script(relative: str) -> ModuleType:
    """Import a file outside the package (scripts/, benchmarks/) by its path under the repository."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = sys.modules[path.stem] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS * 20, vocab_size=200)


@pytest.fixture(scope="session")
def tokens(tokenizer) -> GLMTokens:
    return GLMTokens.of(tokenizer)


def make_glm(vocab_size: int, seed: int = 0, **sizes) -> GLMModel:
    torch.manual_seed(seed)
    config = GLMConfig(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_attention_heads=4,
                       max_sequence_length=128, hidden_dropout=0.0, attention_dropout=0.0, **sizes)
    return GLMModel(config).eval()


@pytest.fixture
def glm(tokenizer) -> GLMModel:
    return make_glm(len(tokenizer))


def write_reviews(path: Path, users: int) -> Path:
    """A small Amazon-format dump: the first `users` reviewers of the bundled demo data, all their reviews."""
    keep: list[str] = []
    with gzip.open(DEMO_ROOT / "reviews_Musical_Instruments_5.json.gz", "rt") as src:
        rows = [json.loads(line) for line in src]
    reviewers = sorted({r["reviewerID"] for r in rows})[:users]
    keep = [json.dumps(r) for r in rows if r["reviewerID"] in set(reviewers)]
    path.mkdir(parents=True, exist_ok=True)
    with gzip.open(path / "reviews_Tiny_5.json.gz", "wt") as dst:
        dst.write("\n".join(keep) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_reviews(tmp_path_factory) -> Path:
    return write_reviews(tmp_path_factory.mktemp("tiny") / "reviews", users=40)
