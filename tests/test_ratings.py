"""Rating decoding: the estimate (mode, mean, median) reported from the model's distribution over rating strings."""

import math

import pytest
import torch

from recsys_lightning.pipeline.datamodule import RecDataModule, TaskSpec
from recsys_lightning.ratings import RatingDecoding, estimate_ratings

SCALE = [1.0, 2.0, 3.0, 4.0, 5.0]


def test_each_estimate_reads_the_renormalised_distribution_over_the_scale():
    probs = torch.tensor([[0.1, 0.1, 0.2, 0.25, 0.35], [0.6, 0.1, 0.1, 0.1, 0.1]])
    scores = probs.log() - 3.0  # unnormalised log-likelihoods: only their differences may matter
    assert estimate_ratings(scores, SCALE, "mode") == [5.0, 1.0]
    mean = estimate_ratings(scores, SCALE, "mean")
    assert mean == pytest.approx([0.1 + 0.2 + 0.6 + 1.0 + 1.75, 0.6 + 0.2 + 0.3 + 0.4 + 0.5])
    assert estimate_ratings(scores, SCALE, "median") == [4.0, 1.0]  # cumulative .65 at 4; .6 at 1


def test_an_unknown_estimate_is_refused_by_name():
    with pytest.raises(ValueError, match="estimate must be 'mode', 'mean' or 'median', got 'average'"):
        RatingDecoding.of({"estimate": "average"})


def test_the_rating_familys_estimate_is_a_decoding_option_applied_to_the_answer_scores(tiny_reviews):
    from recsys_lightning.generation.generator import Generator
    from tests.conftest import make_glm

    options = {"decoding": {"estimate": "mean"}}
    module = RecDataModule(tasks=[TaskSpec("rating", options=options)], root=str(tiny_reviews), vocab_size=400,
                           cache_dir=None)
    module.load()
    family = module.families[0]
    assert type(family).row_options(options) == {}  # out of the cache key: changing it reuses built examples
    module.setup("test")
    batch = next(iter(module.test_dataloader()[0]))
    torch.manual_seed(0)
    generator = Generator(make_glm(len(module.tokenizer)), module.tokens, beam_size=2)
    probs = family.decoder.answers.scores(generator, batch).double().softmax(1)
    expected = (probs * torch.tensor(family.decoder.scale, dtype=torch.float64)).sum(1).tolist()
    decoded = family.decoder.decode(generator, batch)
    assert decoded == pytest.approx(expected)
    assert not all(math.isclose(d, round(d)) for d in decoded)  # an expectation, not one of the rating strings
