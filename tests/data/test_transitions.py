"""Item -> next item counts over the training parts, and the Markov prior built on them."""

from __future__ import annotations

import pytest
import torch

from recsys_lightning.data.transitions import Transitions
from tests.scripts.test_transition_baseline import DATA


def test_followers_count_only_the_training_parts():
    table = Transitions(DATA)
    assert table.followers(0) == {1: 2, 2: 1} and table.followers(1) == {2: 2, 3: 1}
    assert table.followers(4) == {} and table.popularity.tolist() == [5, 4, 3, 1, 0, 0]


def test_log_prior_is_a_distribution_that_ranks_followers_by_count_then_popularity():
    prior = Transitions(DATA).log_prior(torch.tensor([1, 4]), smoothing=0.5)
    assert torch.allclose(prior.exp().sum(1), torch.ones(2), atol=1e-5)
    assert prior[0].argsort(descending=True)[:3].tolist() == [2, 3, 0]  # after b: c twice, d once, then a (popular)
    assert prior[1].argsort(descending=True)[:3].tolist() == [0, 1, 2]  # after e (never followed): by popularity
    expected = torch.tensor((2 + 0.5 * 3 / 15) / (3 + 0.5)).log()  # c after b; 15 = counts with unseen items as 1
    assert torch.isclose(prior[0, 2], expected, atol=1e-5)


def test_smoothing_must_be_positive():
    with pytest.raises(ValueError, match="smoothing must be > 0"):
        Transitions(DATA).log_prior(torch.tensor([0]), smoothing=0.0)
