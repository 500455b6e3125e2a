"""Item -> next item counts over the training parts, and the Markov prior built on them."""

from __future__ import annotations

import pytest
import torch

from recsys_lightning.data.transitions import Transitions
from tests.benchmarks.test_transition_baseline import DATA


def test_followers_count_only_the_training_parts():
    table = Transitions(DATA)
    assert table.followers(0) == {1: 2, 2: 1} and table.followers(1) == {2: 2, 3: 1}
    assert table.followers(4) == {} and table.popularity.tolist() == [5, 4, 3, 1, 0, 0]


def test_counts_for_test_requests_add_each_user_s_validation_item():
    # all but the last item: a b c f, a b d f, a c b e, b c a b, a e
    table = Transitions(DATA, split="test")
    assert table.followers(0) == {1: 3, 2: 1, 4: 1} and table.followers(1) == {2: 2, 3: 1, 4: 1}
    assert table.popularity.tolist() == [5, 5, 3, 1, 2, 2]


def test_a_window_counts_items_two_steps_apart_at_the_decayed_weight():
    # training parts: a b c, a b d, a c b, b c a; two steps apart: a-c, a-d, a-b, b-a, each weighted .5
    table = Transitions(DATA, window=2, decay=0.5)
    assert table.followers(0) == {1: 2.5, 2: 1.5, 3: 0.5} and table.followers(1) == {2: 2, 3: 1, 0: 0.5}
    with pytest.raises(ValueError, match="need window >= 1 and 0 < decay <= 1"):
        Transitions(DATA, window=0)


def test_log_prior_is_a_distribution_that_ranks_followers_by_count_then_popularity():
    prior = Transitions(DATA).log_prior([[0, 1], [4]], smoothing=0.5)
    assert torch.allclose(prior.exp().sum(1), torch.ones(2), atol=1e-5)
    assert prior[0].argsort(descending=True)[:3].tolist() == [2, 3, 0]  # after b: c twice, d once, then a (popular)
    assert prior[1].argsort(descending=True)[:3].tolist() == [0, 1, 2]  # after e (never followed): by popularity
    expected = torch.tensor((2 + 0.5 * 3 / 15) / (3 + 0.5)).log()  # c after b; 15 = counts with unseen items as 1
    assert torch.isclose(prior[0, 2], expected, atol=1e-5)


def test_a_longer_context_mixes_the_followers_of_earlier_items_with_decaying_weights():
    table = Transitions(DATA)
    after = {item: table.log_prior([[item]], smoothing=0.5)[0].exp() for item in (0, 1, 2)}
    mixed = table.log_prior([[0, 2, 1], [1]], smoothing=0.5, context=3, decay=0.5).exp()
    assert torch.allclose(mixed[0], (after[1] + 0.5 * after[2] + 0.25 * after[0]) / 1.75, atol=1e-6)
    assert torch.allclose(mixed[1], after[1], atol=1e-6)  # a history shorter than the context uses what it has
    assert torch.allclose(mixed.sum(1), torch.ones(2, dtype=mixed.dtype), atol=1e-5)


@pytest.mark.parametrize("options", [{"smoothing": 0.0}, {"smoothing": 1.0, "context": 0},
                                     {"smoothing": 1.0, "decay": 0.0}, {"smoothing": 1.0, "decay": 1.5}])
def test_smoothing_context_and_decay_are_checked(options):
    with pytest.raises(ValueError, match="need smoothing > 0, context >= 1 and 0 < decay <= 1"):
        Transitions(DATA).log_prior([[0]], **options)
