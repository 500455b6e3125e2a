"""The count-based transition baseline of docs/results.md ranks the most frequent follower of the last item."""

from __future__ import annotations


import numpy as np
import pytest

from recsys_lightning.data.schema import RecData
from recsys_lightning.data.transitions import Transitions
from tests.conftest import load_script

baseline = load_script("benchmarks/transition_baseline.py")


def recdata(sequences: dict[str, list[str]]) -> RecData:
    users = [u for u, seq in sequences.items() for _ in seq]
    items = [i for seq in sequences.values() for i in seq]
    times = [t for seq in sequences.values() for t in range(len(seq))]
    return RecData.build("toy", users, items, times)


# items a..f are ids 0..5; the held-out last two items of each user never enter the counts
DATA = recdata({"u1": ["a", "b", "c", "f", "f"], "u2": ["a", "b", "d", "f", "f"], "u3": ["a", "c", "b", "e", "a"],
                "u4": ["b", "c", "a", "b", "c"], "u5": ["a", "e", "f"]})


def test_counts_read_only_the_training_part_of_each_sequence():
    follows, popularity = baseline.transition_counts(DATA)
    assert follows[0] == {1: 2, 2: 1} and follows[1] == {2: 2, 3: 1} and follows[2] == {1: 1, 0: 1}
    assert popularity.tolist() == [5, 4, 3, 1, 0, 0]  # e and f occur only in held-out positions


def test_followers_rank_by_count_then_popularity_and_the_history_can_be_left_out():
    table = Transitions(DATA)
    ranked = baseline.rank(np.array([2, 1]), table, 6, exclude_history=False).tolist()
    assert ranked[:4] == [2, 3, 0, 1]  # after b: c (followed twice), d (once), then a and b by popularity
    ranked = baseline.rank(np.array([2, 1]), table, 4, exclude_history=True).tolist()
    assert ranked[:2] == [3, 0] and not {1, 2} & set(ranked[:4])


def test_a_context_of_two_mixes_in_the_followers_of_the_item_before_the_last():
    # c then b: after b c (2) and d (1); after c a (1) and b (1); equal weights lift a and b above d
    ranked = baseline.rank(np.array([2, 1]), Transitions(DATA), 4, exclude_history=False, context=2).tolist()
    assert ranked == [2, 0, 1, 3]


def test_hit_rate_over_the_test_split_matches_a_hand_count():
    # top-1 after the last history item: u3 (e -> a by popularity) and u4 (b -> c) hit; u1, u2, u5 miss
    assert baseline.evaluate(DATA, False, ("test",), ks=(1,))["test"]["hr@1"] == pytest.approx(2 / 5)
    # with the history left out, neither a (u3) nor c (u4) can be ranked
    assert baseline.evaluate(DATA, True, ("test",), ks=(1,))["test"]["hr@1"] == 0.0


def test_followers_count_how_often_the_target_followed_the_last_item_in_training():
    # test split: only u4's target (c after b, followed twice) ever followed its history's last item
    assert baseline.followers(DATA, ("test",))["test"] == {"seen": 0.2, "top": 0.2, "once": 0.0}
    # a is followed once by b and once by c in training: u3's target c is a follower seen once, tied for the top
    data = recdata({"u1": ["a", "b", "q", "q"], "u2": ["a", "c", "q", "q"], "u3": ["d", "a", "c"]})
    expected = {"seen": 1 / 3, "top": 1 / 3, "once": 1.0}
    assert baseline.followers(data, ("test",))["test"] == pytest.approx(expected, abs=1e-6)


def test_known_counts_let_the_test_split_follow_the_validation_items():
    # u1's validation item b followed a: only counted for the test split does u2's b rank first after a (above x,
    # the most popular item); u1 (after b) and u3 (after y) miss either way
    data = recdata({"u1": ["a", "b", "c"], "u2": ["x", "a", "b"], "u3": ["x", "y", "x", "y", "z"]})
    assert baseline.evaluate(data, False, ("test",), ks=(1,), known=True)["test"]["hr@1"] == pytest.approx(1 / 3)
    assert baseline.evaluate(data, False, ("test",), ks=(1,))["test"]["hr@1"] == 0.0
