"""The entity-masking family: its built training examples never cut an entity and mask ~15% of the tokens (on
real Beauty text and the demo slice); held-out subjects; evaluation metrics."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from recsys_lightning.pipeline.datamodule import RecDataModule, TaskSpec
from recsys_lightning.pipeline.encode import entity_token_spans, tokenize
from recsys_lightning.data.splits import training_sequences
from recsys_lightning.data.textualize import user_name
from recsys_lightning.infilling.layout import IGNORE
from recsys_lightning.infilling.masking import merge_spans
from tests.conftest import SHARED_DATA
from tests.infilling.test_masking import filled_in
from tests.test_cli import run

BEAUTY = SHARED_DATA / "beauty"


def masking_report(dm: RecDataModule) -> dict[str, Any]:
    """Check every built training example against its text, tokenized again here: Part A + Part B restore the
    text, each blank is one whole entity or touches none. Returns mask ratios and entity counts."""
    tokens = dm.tokens
    examples = dm._train[0]
    ids, offsets = tokenize(dm.tokenizer, examples["text"])
    ratios, entities, masked_entities, cut = [], 0, 0, 0
    for row, text_ids, offset in zip(examples, ids, offsets):
        spans = merge_spans(entity_token_spans(offset, row["entity_spans"]), len(text_ids))
        restored, blanks = filled_in(row, tokens)
        assert restored == text_ids
        for start, span in blanks:
            blank = (start, start + len(span))
            touching = [e for e in spans if e[0] < blank[1] and blank[0] < e[1]]
            cut += bool(touching) and touching != [blank]
            masked_entities += bool(touching)
        entities += len(spans)
        masked = sum(label != IGNORE for label in row["labels"]) - len(blanks)  # labels = spans + <|endofpiece|>s
        ratios.append(masked / len(text_ids))
    return {"examples": len(examples), "ratio": float(np.mean(ratios)), "entities": entities,
            "masked_entities": masked_entities, "cut": cut}


def masking_module(root: str, fmt: str, **options: Any) -> RecDataModule:
    dm = RecDataModule(tasks=[TaskSpec("entity_masking", options=options)], root=root, format=fmt,
                       vocab_size=2000, max_length=1024, cache_dir=None)
    dm.setup("fit")
    return dm


@pytest.mark.slow
@pytest.mark.skipif(not (BEAUTY / "Beauty.txt").is_file(), reason="shared Beauty data absent")
def test_beauty_examples_never_cut_an_entity_and_mask_fifteen_percent():
    dm = masking_module(str(BEAUTY), "s3rec")
    kinds = set(dm._train[0]["kind"])
    assert kinds == {"item", "behaviour"}  # Beauty users have no features: "user_1" alone has nothing to infer
    report = masking_report(dm)
    assert report["examples"] > 25_000 and report["cut"] == 0
    assert report["masked_entities"] > 0.1 * report["entities"]
    assert abs(report["ratio"] - 0.15) < 0.01, report


@pytest.fixture(scope="module")
def tiny(tiny_reviews) -> RecDataModule:
    return masking_module(str(tiny_reviews), "amazon_reviews", masks_per_text=3)


def test_demo_examples_never_cut_an_entity_and_are_stable(tiny, tiny_reviews):
    report = masking_report(tiny)
    assert report["cut"] == 0 and report["masked_entities"] > 0
    assert 0.1 < report["ratio"] < 0.2, report
    rows = tiny._train[0]
    assert set(rows["kind"]) == {"behaviour"}  # the demo's items are bare ids: only behaviour text qualifies
    copies = [r["input_ids"] for r in rows if r["subject"] == rows[0]["subject"]]
    assert len(copies) == 3 and len({tuple(c) for c in copies}) == 3  # each copy masked with its own seed
    again = masking_module(str(tiny_reviews), "amazon_reviews", masks_per_text=3)._train[0]
    assert again["input_ids"] == rows["input_ids"] and again["labels"] == rows["labels"]


def test_behaviour_uses_training_items_and_held_out_users_stay_out_of_training(tiny):
    family, data = tiny.families[0], tiny.data
    train = {r.meta["subject"] for r in family.requests(data, "train")}
    held_out = {r.meta["subject"] for split in ("val", "test") for r in family.requests(data, split)}
    assert train and held_out and not train & held_out
    assert len(train) + len(held_out) == data.num_users
    sequences = training_sequences(data)
    for request in family.requests(data, "test"):
        user = list(data.users).index(request.meta["subject"])
        text = request.values["before"].text + request.values["entity"] + request.values["after"].text
        assert text.startswith(user_name(user) + " interacted with items ")
        shown = text.removeprefix(user_name(user) + " interacted with items ").rstrip(".").split(", ")
        assert shown == [tiny.index.render(int(i)) for i in sequences[user][-50:]]
        assert request.meta["field"] == "items"  # the blank is never the text's own subject


def test_it_trains_beside_sequential_in_one_cli_run_and_reports_its_metrics(tmp_path, tiny_reviews):
    tasks = '[{"name": "sequential"}, {"name": "entity_masking", "weight": 0.5, "max_eval_requests": 3}]'
    run("fit", tmp_path, tiny_reviews, "--data.tasks", tasks, "--checkpoint.monitor", "val/sequential/ndcg@10")
    out = run("test", tmp_path, tiny_reviews, "--data.tasks", tasks, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"))
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]["entity_masking"]
    assert set(metrics) == {"exact_match", "perplexity", "unseen/exact_match", "unseen/perplexity"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("exact_match", "unseen/exact_match"))
    # a barely trained model: about as perplexed as a uniform guess over the 300-token vocabulary
    assert all(1.0 < metrics[k] < 600 for k in ("perplexity", "unseen/perplexity"))
    assert results["dataset"]["examples"]["entity_masking"]["test-seen-entity"] == 3
    assert "ndcg@10" in results["metrics"]["sequential"]


class Oracle:
    """A generator stand-in: fixed log-likelihoods, and infills that are right for even rows only."""

    def __init__(self, log_p: torch.Tensor) -> None:
        self.log_p = log_p

    def score_candidates(self, batch: dict[str, Any], candidates: torch.Tensor) -> torch.Tensor:
        assert candidates.shape[:2] == (len(batch["target_ids"]), 1)
        return self.log_p[:, None]

    def generate(self, batch: dict[str, Any], max_new_tokens: int) -> list[list[int]]:
        assert max_new_tokens == max(len(t) for t in batch["target_ids"]) + 1
        return [list(t) if i % 2 == 0 else list(t) + [7] for i, t in enumerate(batch["target_ids"])]


def test_exact_match_and_perplexity_of_held_out_entities(tiny):
    family = tiny.families[0]
    batch = next(iter(tiny.val_dataloader()[0]))
    n = len(batch["target_ids"])
    assert (batch["input_ids"] == tiny.tokens.mask).sum(1).eq(1).all() and batch["target"][0]
    log_p = -torch.arange(1, n + 1, dtype=torch.float)
    metrics = family.metrics("entity")
    family.evaluate(Oracle(log_p), batch, metrics)
    assert float(metrics["exact_match"].compute()) == pytest.approx(math.ceil(n / 2) / n)
    tokens = sum(len(t) + 1 for t in batch["target_ids"])
    assert float(metrics["perplexity"].compute()) == pytest.approx(math.exp(float(-log_p.sum()) / tokens), rel=1e-5)
    answers = family.predict(Oracle(log_p), batch)
    assert answers[0]["entity"] == answers[0]["reference"] == batch["target"][0]


def test_bad_options_are_named():
    from recsys_lightning.registry import get_task

    cls = get_task("entity_masking")
    with pytest.raises(ValueError, match="sources must be"):
        cls(sources=["items"])
    with pytest.raises(ValueError, match="names \\['user', 'when'\\]"):
        cls(behaviour="{user} at {when}")
    with pytest.raises(ValueError, match="mask ratio"):
        cls(mask_ratio=0.0)


def test_a_text_whose_first_entity_cannot_fit_stops_the_build_naming_the_row(tiny_reviews):
    from recsys_lightning.pipeline.encode import EncodingError

    dm = RecDataModule(tasks=[TaskSpec("entity_masking")], root=str(tiny_reviews), vocab_size=300, max_length=4,
                       cache_dir=None)
    with pytest.raises(EncodingError, match=r"template 'mask-1', request 0: no head of the \d+-token text fits"):
        dm.setup("fit")
