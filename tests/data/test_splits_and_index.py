"""Splits, sampling, explanation extraction and item indexing, with the leak test of every leak-free index."""

import numpy as np
import pytest

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.pipeline.datamodule import DEMO_ROOT
from recsys_lightning.data.explanations import extract_explanations, feature_words
from recsys_lightning.data.indexing import build_index
from recsys_lightning.data.schema import DataError, RecData
from recsys_lightning.data.splits import (known_sequences, leave_one_out, review_split, sample_negatives,
                                          training_sequences)
from recsys_lightning.data.textualize import describe_item
from recsys_lightning.infilling.tokenizer import train_tokenizer
from recsys_lightning.family import FamilyContext
from recsys_lightning.registry import discover, get_task


def test_leave_one_out():
    seq = np.array([5, 6, 7, 8])
    assert leave_one_out(seq, "test")[1] == 8 and list(leave_one_out(seq, "test")[0]) == [5, 6, 7]
    assert leave_one_out(seq, "val")[1] == 7 and list(leave_one_out(seq, "val")[0]) == [5, 6]
    assert leave_one_out(seq, "train")[1] == 6
    assert leave_one_out(seq, "refit")[1] == 7 and list(leave_one_out(seq, "refit")[0]) == [5, 6]
    assert leave_one_out(np.array([1, 2]), "test") is None


def test_known_sequences_hold_what_a_split_s_requests_come_after(tiny_reviews):
    data = load_dataset("amazon_reviews", tiny_reviews, 0)
    training, known = training_sequences(data), known_sequences(data, "test")
    for user, (part, before_test) in enumerate(zip(training, known)):
        assert list(before_test) == list(data.sequence(user)[:-1]) and list(before_test[:-1]) == list(part)
    assert [list(s) for s in known_sequences(data, "val")] == [list(s) for s in training]


def test_ties_in_time_are_broken_by_seeded_hash_not_by_id():
    users = ["u"] * 4
    items = ["a", "b", "c", "d"]
    orders = {tuple(RecData.build("x", users, items, [1, 1, 1, 1], seed=s).sequence(0)) for s in range(8)}
    assert len(orders) > 1  # the order depends on the seed, not on the ids


def test_sequential_ids_are_assigned_over_training_interactions_first(tiny_reviews):
    data = load_dataset("amazon_reviews", tiny_reviews, 0)
    index = build_index("sequential", data, 0)
    held_out = {int(data.sequence(u)[-1]) for u in range(data.num_users)} | {
        int(data.sequence(u)[-2]) for u in range(data.num_users)}
    in_train = {int(i) for u in range(data.num_users) for i in data.sequence(u)[:-2]}
    train_numbers = {int(index.render(i)) for i in in_train}
    only_held_out = held_out - in_train
    assert train_numbers == set(range(1, len(in_train) + 1))
    assert all(int(index.render(i)) > len(in_train) for i in only_held_out)
    assert index.parse(index.render(3)) == 3


# --- leak-free indexing --------------------------------------------------------------------------------------------
LEAK_FREE = ("sequential", "random", "title", "atomic", "semantic")


def rebuild(data: RecData, replace_held_out: bool) -> RecData:
    """`data` with titles (a few shared, to exercise the suffixes and semantic collisions) in its item descriptions
    and each user's last two items moved strictly after the rest; optionally those two replaced by other items
    (brand-new ones and existing ones)."""
    users, items, times = [], [], []
    last = int(data.timestamp.max())
    for u in range(data.num_users):
        seq = data.sequence(u).tolist()
        keys = [data.items[i] for i in seq]
        stamps = data.timestamp[data.offsets[u]:data.offsets[u + 1]].tolist()
        stamps[-2:] = [last + 1, last + 2]  # held out in both copies, whatever the tie-break seed
        if replace_held_out:
            keys[-2:] = [data.items[(seq[0] + 7) % data.num_items], f"NEW{u % 5}"]
        users += [data.users[u]] * len(seq)
        items += keys
        times += stamps
    titles = {k: f"Title {sum(map(ord, k)) % 40}" for k in set(items)}
    return RecData.build("leak", users, items, times, seed=3, item_features={"title": titles},
                         templates={"item": "item {item}[ is {title}]"})  # semantic ids encode the titles


def training_view(data: RecData, kind: str) -> tuple[dict, list, list, tuple]:
    """What training sees: each training item's rendering and description, the sequential family's training
    requests, and the atomic tokens of training items."""
    index = build_index(kind, data, 3)
    trained = {int(i) for u in range(data.num_users) for i in data.sequence(u)[:-2]}
    rendering = {data.items[i]: (index.render(i), describe_item(data, index, i).text) for i in trained}
    discover()
    family = get_task("sequential")(max_history=5)
    family.context = FamilyContext(data, index, None)
    rows = [request.values for request in family.requests(data, "train")]
    histories = [[data.items[i] for i in data.sequence(u)[:-2]] for u in range(data.num_users)]
    return rendering, rows, histories, index.new_tokens[:len(trained)]


@pytest.mark.parametrize("kind", LEAK_FREE)
def test_no_held_out_target_shapes_any_training_id_prompt_or_history(tiny_reviews, kind):
    data = load_dataset("amazon_reviews", tiny_reviews, 0)
    original, changed = rebuild(data, replace_held_out=False), rebuild(data, replace_held_out=True)
    assert changed.items != original.items  # items arrived and left, so dense ids moved
    before, after = training_view(original, kind), training_view(changed, kind)
    assert before[0] == after[0]  # every training item is written and described the same way
    assert before[1] == after[1]  # every training prompt's values (user, history, target) are identical
    assert before[2] == after[2] and before[3] == after[3]


def test_p5_numbering_is_the_sequence_files_and_needs_it(tiny_reviews):
    data = RecData.build("p5", ["1", "1", "1"], ["5", "9", "2"], [0, 1, 2], item_features={"p5_id": {
        "5": "5", "9": "9", "2": "2"}})
    assert [build_index("p5", data, 0).render(i) for i in data.sequence(0)] == ["5", "9", "2"]
    with pytest.raises(DataError, match="'p5' needs the dataset's original P5 numbering"):
        build_index("p5", load_dataset("amazon_reviews", tiny_reviews, 0), 0)


def test_titles_are_made_unique_and_parse_back(tiny_reviews):
    data = rebuild(load_dataset("amazon_reviews", tiny_reviews, 0), replace_held_out=False)
    index = build_index("title", data, 0)
    assert len(set(index.strings)) == data.num_items and any(s.endswith(" (2)") for s in index.strings)
    assert all(index.parse(index.render(i)) == i for i in range(data.num_items))
    with pytest.raises(DataError, match="'title' needs item titles"):
        build_index("title", load_dataset("amazon_reviews", tiny_reviews, 0), 0)


def test_atomic_ids_are_one_token_each(tiny_reviews):
    data = load_dataset("amazon_reviews", tiny_reviews, 0)
    index = build_index("atomic", data, 0)
    tokenizer = train_tokenizer(["history of items bought"] * 5, 60)
    base = len(tokenizer)
    tokenizer.add_tokens(list(index.new_tokens))
    assert len(tokenizer) == base + data.num_items
    ids = tokenizer([index.render(i) for i in range(data.num_items)], add_special_tokens=False)["input_ids"]
    assert all(len(x) == 1 for x in ids) and len({x[0] for x in ids}) == data.num_items
    in_context = tokenizer(f"history {index.render(3)}, {index.render(5)}", add_special_tokens=False)["input_ids"]
    assert ids[3][0] in in_context and ids[5][0] in in_context


# --- splits and sampling -----------------------------------------------------------------------------------------
def test_review_split_is_80_10_10_with_every_user_and_item_in_train():
    data = load_dataset("amazon_reviews", DEMO_ROOT, 0)
    split = review_split(data, seed=0)
    shares = np.bincount(split, minlength=3) / len(split)
    assert abs(shares[0] - 0.8) < 0.02 and abs(shares[1] - 0.1) < 0.02 and abs(shares[2] - 0.1) < 0.02
    assert set(data.user[split == 0].tolist()) == set(range(data.num_users))
    assert set(data.item[split == 0].tolist()) == set(range(data.num_items))
    assert np.array_equal(split, review_split(data, seed=0)) and not np.array_equal(split, review_split(data, 1))


def test_negatives_are_unseen_distinct_and_fixed_per_user():
    data = load_dataset("amazon_reviews", DEMO_ROOT, 0)
    for user in (0, 7, 500):
        negatives = sample_negatives(data, user, seed=0)
        assert len(negatives) == 99 == len(set(negatives.tolist()))
        assert not set(negatives.tolist()) & set(data.sequence(user).tolist())
        assert np.array_equal(negatives, sample_negatives(data, user, seed=0))
    assert not np.array_equal(sample_negatives(data, 0, 0), sample_negatives(data, 7, 0))
    with pytest.raises(ValueError, match="unseen items; 99 negatives were asked for"):
        sample_negatives(RecData.build("small", ["u"] * 3, ["a", "b", "c"], [0, 1, 2]), 0, 0)


def test_explanations_are_review_sentences_mentioning_a_feature_word():
    data = load_dataset("amazon_reviews", DEMO_ROOT, 0)
    features = feature_words(data)
    assert {"guitar", "strings", "pedal", "price", "tuner", "cable"} <= set(features)
    assert not {"great", "good", "bought", "really"} & set(features)
    explanations = extract_explanations(data)
    found = [(e, text) for e, text in zip(explanations, data.review) if e is not None]
    assert len(found) > 0.8 * len(data.review)
    for explanation, text in found[:500]:
        assert explanation.sentence in text and explanation.feature in explanation.sentence.lower()
        assert 4 <= len(explanation.sentence.split()) <= 30


def test_feature_words_count_only_the_interactions_marked_as_training():
    data = load_dataset("amazon_reviews", DEMO_ROOT, 0)
    train = review_split(data, 0) == 0
    held_out = np.flatnonzero(~train)
    # a made-up noun in held-out reviews of many items: a feature word if everything counts, none if training does
    for row in held_out[:60]:
        data.review[row] = data.review[row] + " I love the zorbulator."
    assert "zorbulator" in feature_words(data)
    assert "zorbulator" not in feature_words(data, counted=train)
    assert {"guitar", "strings"} <= set(feature_words(data, counted=train))
    explained = extract_explanations(data, train)
    assert all(e is None or e.feature != "zorbulator" for e in explained)
