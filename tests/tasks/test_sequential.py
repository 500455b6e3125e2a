"""The sequential family with the history in the blank (prompts/variants/sequential_id_only_causal.yaml)."""

from __future__ import annotations

import pytest
import torch

from recsys_lightning.pipeline.datamodule import RecDataModule, TaskSpec
from recsys_lightning.data.splits import leave_one_out
from recsys_lightning.data.transitions import Transitions
from recsys_lightning.generation.generator import Generator
from recsys_lightning.infilling.layout import IGNORE
from tasks.sequential import Sequential, Slices, TransitionPrior
from tests.conftest import make_glm


def causal_module(root, **options) -> RecDataModule:
    """The sequential family alone on its causal ID-only prompt, atomic ids, histories of up to 50 items."""
    spec = TaskSpec("sequential", options={"max_history": 50, "every_window": False, **options},
                    prompts="variants/sequential_id_only_causal.yaml")
    return RecDataModule(tasks=[spec], root=str(root), item_index="atomic", vocab_size=400, max_length=128,
                         cache_dir=None)


def test_one_causal_row_per_user_predicts_every_training_item_and_decoding_is_given_the_history(tiny_reviews):
    dm = causal_module(tiny_reviews)
    dm.setup("fit")
    dm.setup("test")
    data, tokens, item_token = dm.data, dm.tokens, dm.families[0].ctx.item_trie.item_tokens[:, 0]
    train, test = dm._train[0], dm._eval["test"][0]
    users = [u for u in range(data.num_users) if leave_one_out(data.sequence(u), "train") is not None]
    assert len(train) == len(users) and len(test) == data.num_users
    for row, user in zip(train, users):
        history, target = leave_one_out(data.sequence(user), "train")
        items = [*history.tolist(), target][-51:]
        assert row["input_ids"][: row["part_a_length"]] == [tokens.cls, min(tokens.masks), tokens.eos]
        labels = [t for t in row["labels"] if t != IGNORE]
        assert labels == [*item_token[items].tolist(), tokens.eop]  # every item, one atomic token each
    for row in test:  # the test item follows the whole history (training and validation items) in Part B
        assert row["input_ids"] == [tokens.cls, min(tokens.masks), tokens.eos]
        assert row["part_b_ids"] == item_token[data.sequence(row["user_id"])[:-1][-50:]].tolist()


def test_a_refit_trains_each_user_s_row_through_the_validation_item_and_does_not_validate(tiny_reviews):
    spec = TaskSpec("sequential", options={"max_history": 50, "every_window": False},
                    prompts="variants/sequential_id_only_causal.yaml")
    dm = RecDataModule(tasks=[spec], root=str(tiny_reviews), item_index="atomic", vocab_size=400, max_length=128,
                       cache_dir=None, refit=True)
    dm.setup("fit")
    data, item_token = dm.data, dm.families[0].ctx.item_trie.item_tokens[:, 0]
    users = [u for u in range(data.num_users) if leave_one_out(data.sequence(u), "refit") is not None]
    assert len(dm._train[0]) == len(users) and dm.val_dataloader() == [] and "val" not in dm._eval
    for row, user in zip(dm._train[0], users):
        labels = [t for t in row["labels"] if t != IGNORE]
        assert labels == [*item_token[data.sequence(user)[:-1][-51:]].tolist(), dm.tokens.eop]  # all but the test item


def test_crops_add_seeded_contiguous_windows_of_the_training_part(tiny_reviews):
    def train_rows(crops: int) -> tuple[RecDataModule, list[list[int]]]:
        dm = causal_module(tiny_reviews, crops=crops)
        dm.setup("fit")
        return dm, [[t for t in row["labels"] if t != IGNORE] for row in dm._train[0]]

    _, plain = train_rows(0)
    dm, rows = train_rows(2)
    assert rows == train_rows(2)[1]  # the windows are seeded: the same rows every build
    eop = dm.tokens.eop
    position, windows = 0, 0
    for whole in plain:  # per user: the whole training part, as without crops, then its two windows
        assert rows[position] == whole
        training = whole[:-1]
        spans = {tuple(training[i:j]) for i in range(len(training)) for j in range(i + 2, len(training) + 1)}
        for labels in rows[position + 1: position + (3 if len(training) > 1 else 1)]:
            assert labels[-1] == eop and tuple(labels[:-1]) in spans  # a window of two items or more
            windows += 1
        position += 3 if len(training) > 1 else 1
    assert windows > 0 and position == len(rows)


def test_crops_must_not_be_negative(tiny_reviews):
    with pytest.raises(ValueError, match="crops >= 0"):
        Sequential(crops=-1)


@pytest.mark.parametrize(("context", "window", "counts", "split"),
                         [(1, 1, "training", "val"), (3, 2, "training", "val"), (3, 2, "known", "test")])
def test_transition_prior_adds_the_markov_log_prior_of_the_last_items_to_the_ranking(tiny_reviews, context, window,
                                                                                     counts, split):
    dm = causal_module(tiny_reviews)
    dm.setup("test")
    family, batch = dm.families[0], next(iter(dm.test_dataloader()[0]))
    generator = Generator(make_glm(len(dm.tokenizer)), dm.tokens, beam_size=10, score_end=False)
    plain, plain_scores = family._rank(generator, batch)
    family.prior = TransitionPrior(weight=0.7, smoothing=0.5, context=context, decay=0.3, window=window, counts=counts)
    ranked, scores = family._rank(generator, batch)
    histories = [list(items) for items in batch["seen_items"]]
    prior = Transitions(dm.data, window, 0.3, split).log_prior(histories, 0.5, context, 0.3)
    everything = generator.score_items(batch, family.ctx.item_trie.item_tokens.expand(len(histories), -1, -1))
    for row, items in enumerate(batch["seen_items"]):
        fused = everything[row] + 0.7 * prior[row]
        fused[items] = float("-inf")  # the history is excluded, as without the prior
        top = fused.topk(10)
        assert ranked[row].tolist() == top.indices.tolist()
        assert torch.allclose(scores[row], top.values, atol=1e-4)
    assert ranked.tolist() != plain.tolist()


def test_known_counts_take_each_batch_s_split_from_the_batch(tiny_reviews):
    dm = causal_module(tiny_reviews)
    dm.setup("fit")
    dm.setup("test")
    family = dm.families[0]
    val, test = next(iter(dm.val_dataloader()[0])), next(iter(dm.test_dataloader()[0]))
    assert val["split"] == "val" and test["split"] == "test"
    assert family.transitions("test").counts.sum() > family.transitions("val").counts.sum()


def test_prior_is_one_typed_option_given_as_a_mapping():
    family = Sequential(prior={"weight": 1.5, "context": 5, "decay": 0.7, "window": 5, "counts": "known"})
    assert family.prior == TransitionPrior(weight=1.5, context=5, decay=0.7, window=5, counts="known")
    assert Sequential().prior.weight == 0
    with pytest.raises(ValueError, match="counts must be 'training' or 'known'"):
        Sequential(prior={"counts": "all"})
    with pytest.raises(TypeError, match="unexpected keyword argument 'transition_prior'"):
        Sequential(prior={"transition_prior": 1.0})


@pytest.mark.parametrize("fields", [{"weight": -1.0}, {"smoothing": 0.0}, {"context": 0}, {"window": 0},
                                    {"decay": 0.0}, {"decay": 1.5}])
def test_transition_prior_fields_are_checked(fields):
    with pytest.raises(ValueError, match="need weight >= 0, smoothing > 0, context >= 1"):
        Sequential(prior=fields)


def test_slices_score_cold_targets_and_short_histories_from_the_training_parts_alone(tiny_reviews):
    dm = causal_module(tiny_reviews, slices={"cold_item": 2, "short_history": 4})
    dm.setup("test")
    family, data = dm.families[0], dm.data
    generator = Generator(make_glm(len(dm.tokenizer)), dm.tokens, beam_size=10, score_end=False)
    parts = [data.sequence(u)[:-2] for u in range(data.num_users)]
    item_counts = {i: sum(int((p == i).sum()) for p in parts) for i in range(data.num_items)}
    metrics = family.metrics("item")
    cold = short = hits = 0
    for batch in dm.test_dataloader()[0]:
        family.evaluate(generator, batch, metrics)
        ranked, _ = family._rank(generator, batch)
        for user, target, top in zip(batch["user_id"].tolist(), batch["target_item"].tolist(), ranked.tolist()):
            cold += item_counts[target] <= 2
            short += len(parts[user]) <= 4
            hits += item_counts[target] <= 2 and target in top[:10]
    assert 0 < cold < data.num_users and 0 < short < data.num_users  # both slices are proper parts of the users
    assert float(metrics["cold/requests"].compute()) == cold and float(metrics["short/requests"].compute()) == short
    assert float(metrics["cold/hr@10"].compute()) == pytest.approx(hits / cold)
    assert (family.slices.cold_item, family.slices.short_history) == (2, 4) and Sequential().slices == Slices(5, 3)
    assert "slices" not in Sequential.row_options({"slices": {"cold_item": 2}, "max_history": 5})


def test_slice_thresholds_must_not_be_negative():
    with pytest.raises(ValueError, match="cold_item >= 0"):
        Sequential(slices={"cold_item": -1})
