"""The locally trained tokenizer learns from the training split's text only: a held-out review adds no vocabulary."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.data.splits import SPLIT_IDS, review_split
from recsys_lightning.pipeline.datamodule import RecDataModule, TaskSpec

TEST_ONLY, TRAIN_ONLY = "zyzzogeton", "quuxblatter"


def plant_words(source: Path, target: Path) -> Path:
    """A copy of an Amazon dump whose test reviews repeat TEST_ONLY and whose training reviews repeat TRAIN_ONLY."""
    data = load_dataset("amazon_reviews", source, 0)
    split = review_split(data, 0)
    keys = {(data.users[int(u)], data.items[int(i)]): int(s) for u, i, s in zip(data.user, data.item, split)}
    with gzip.open(source / "reviews_Tiny_5.json.gz", "rt") as src:
        rows = [json.loads(line) for line in src]
    for row in rows:
        which = keys[(row["reviewerID"], row["asin"])]
        word = {SPLIT_IDS["test"]: TEST_ONLY, SPLIT_IDS["train"]: TRAIN_ONLY}.get(which)
        if word:
            row["reviewText"] = f"{row['reviewText']} " + " ".join([word] * 5)
    target.mkdir(parents=True)
    with gzip.open(target / "reviews_Tiny_5.json.gz", "wt") as dst:
        dst.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return target


def test_a_word_seen_only_in_test_reviews_is_no_vocabulary_entry(tiny_reviews, tmp_path):
    root = plant_words(tiny_reviews, tmp_path / "planted")
    dm = RecDataModule(tasks=[TaskSpec("review")], root=str(root), cache_dir=None, vocab_size=1000)
    dm.load()
    vocab = dm.tokenizer.get_vocab()
    assert not any(TEST_ONLY in entry for entry in vocab)  # not even a part of it survives as one entry
    assert len(dm.tokenizer.tokenize(TEST_ONLY)) > 1
    assert len(dm.tokenizer.tokenize(TRAIN_ONLY)) == 1  # as frequent, in training text: one entry
