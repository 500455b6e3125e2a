"""The rating, explanation and review baselines of benchmarks/family_baselines.py: fitted on training requests,
chosen on validation, the test split read once, scored by the families' metrics."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.data.schema import RecData
from recsys_lightning.family import Request
from tests.conftest import load_script

baselines = load_script("benchmarks/family_baselines.py")


def rating(user: int, item: int, value: float) -> Request:
    return Request({}, {"user_id": user, "item_id": item, "rating_value": value})


def toy_data(ratings: list[float]) -> RecData:
    return RecData.build("toy", ["u0", "u1", "u2"], ["i0", "i1", "i2"], [0, 0, 0], ratings=ratings)


def test_user_item_bias_without_regularisation_recovers_additive_ratings():
    # r = 3 + b_u + b_i with b_u = (-1, 0, 1), b_i = (0.5, 0, -0.5): a full 3 x 3 grid fits exactly
    b_user, b_item = [-1.0, 0.0, 1.0], [0.5, 0.0, -0.5]
    train = [rating(u, i, 3 + b_user[u] + b_item[i]) for u in range(3) for i in range(3)]
    ratings = baselines.Ratings.of(toy_data([1.0, 5.0, 3.0]), train)
    predict = baselines.user_item_bias(ratings, 3, 3, 0.0, 0.0, sweeps=50)
    assert [predict(r) for r in train] == pytest.approx([r.meta["rating_value"] for r in train], abs=1e-6)
    assert baselines.global_mean(ratings)(train[0]) == pytest.approx(3.0)
    shrunk = baselines.user_item_bias(ratings, 3, 3, 1000.0, 1000.0)
    assert shrunk(train[0]) == pytest.approx(3.0, abs=0.01)  # heavy regularisation: back to the mean


def test_predictions_clip_to_the_rating_scale():
    train = [rating(0, 0, 5.0), rating(0, 1, 5.0), rating(1, 0, 5.0), rating(2, 2, 1.0)]
    ratings = baselines.Ratings.of(toy_data([1.0, 5.0, 3.0]), train)
    predict = baselines.user_item_bias(ratings, 3, 3, 0.0, 0.0)
    assert 1.0 <= predict(rating(0, 0, 0.0)) <= 5.0 and ratings.clip(7.0) == 5.0


def test_choose_keeps_the_validation_best_and_reads_the_test_split_once():
    requests = {"val": [rating(0, 0, 4.0)], "test": [rating(0, 0, 2.0)]}
    reads: list[str] = []

    def score(reqs, predict):
        reads.append("test" if reqs is requests["test"] else "val")
        return baselines.rating_scores(reqs, predict)
    chosen = baselines.choose(baselines.grid(value=(1.0, 3.5, 5.0)), lambda value: (lambda r: value), score,
                              lambda s: s["rmse"], requests)
    assert chosen.settings == {"value": 3.5}
    assert chosen.val["rmse"] == pytest.approx(0.5) and chosen.test["rmse"] == pytest.approx(1.5)
    assert reads == ["val", "val", "val", "test"]


def explanation(user: int, item: int, feature: str, sentence: str) -> Request:
    return Request({"feature": feature}, {"user_id": user, "item_id": item, "reference": sentence})


def test_retrieval_takes_the_items_sentence_with_the_hint_then_its_most_frequent_then_the_users_own():
    train = [explanation(0, 0, "strings", "The strings ring."), explanation(1, 0, "tuner", "The tuner works."),
             explanation(2, 0, "tuner", "The tuner works."), explanation(0, 1, "cable", "My cable hums loudly."),
             explanation(3, 1, "strings", "These strings stay in tune.")]
    pool = baselines.ExplanationPool.of(train)
    assert pool.item_sentence(explanation(9, 0, "strings", "")) == "The strings ring."
    assert pool.item_sentence(explanation(9, 0, "case", "")) == "The tuner works."  # most frequent of item 0
    assert pool.item_sentence(explanation(9, 7, "cable", "")) == "My cable hums loudly."  # unknown item: the hint's
    # user 0 wrote about strings (item 0) and a cable (item 1): their own sentence with the hint wins
    assert pool.user_sentence(explanation(0, 1, "strings", "")) == "The strings ring."
    # no sentence of theirs has the hint: the one of theirs most like the item's ("The tuner works.")
    assert pool.user_sentence(explanation(3, 0, "tuner", "")) == "These strings stay in tune."
    assert pool.user_sentence(explanation(0, 0, "tuner", "")) == "The strings ring."  # shares "the" with it
    assert pool.user_sentence(explanation(9, 0, "tuner", "")) == "The tuner works."  # unknown user: the item's


def test_review_baselines_lead_words_and_the_items_most_frequent_summary():
    def review(item: int, text: str, summary: str) -> Request:
        return Request({"review": text}, {"user_id": 0, "item_id": item, "reference": summary})
    train = [review(0, "a", "Great strings"), review(0, "b", "Great strings"), review(0, "c", "Meh"),
             review(1, "d", "Fine cable")]
    predict = baselines.item_frequent_summary(train)
    assert predict(review(0, "", "")) == "Great strings" and predict(review(5, "", "")) == "Great strings"
    assert baselines.lead_words(3)(review(0, "these are very good strings", "")) == "these are very"


def test_lead_words_are_chosen_on_validation_by_rouge_l():
    reqs = [Request({"review": "great strings for the price and they last"}, {"reference": "great strings"})]
    chosen = baselines.choose(baselines.grid(words=(1, 2, 5)), baselines.lead_words,
                              lambda r, p: baselines.text_scores(r, p, 2), lambda s: -s["rougeL"],
                              {"val": reqs, "test": reqs})
    assert chosen.settings == {"words": 2} and chosen.test["rougeL"] == pytest.approx(1.0)


def test_svd_fits_the_training_split_and_beats_the_mean_on_low_rank_ratings():
    pytest.importorskip("surprise")
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    grid = np.clip(np.round(3 + users @ items.T), 1, 5)
    cells = [(u, i) for u in range(30) for i in range(30)]
    train = [rating(u, i, float(grid[u, i])) for u, i in cells if (u + i) % 5]
    held = [rating(u, i, float(grid[u, i])) for u, i in cells if not (u + i) % 5]
    ratings = baselines.Ratings.of(toy_data([1.0, 5.0, 3.0]), train)
    svd = baselines.surprise_svd(ratings, 0, n_factors=2, n_epochs=100, lr_all=0.01, reg_all=0.02)
    mean = baselines.global_mean(ratings)
    assert baselines.rating_scores(held, svd)["rmse"] < 0.8 * baselines.rating_scores(held, mean)["rmse"]


def test_every_family_runs_on_review_data_with_the_familys_own_requests(tiny_reviews):
    data = load_dataset("amazon_reviews", tiny_reviews, 0)
    assert baselines.supported(data) == ["rating", "explanation", "review"]
    out = baselines.run(data, baselines.supported(data), 0, svd=False)
    assert set(out["rating"]) == {"requests", "global_mean", "user_item_bias"}
    assert out["rating"]["requests"]["test"] > 0 and set(out["rating"]["global_mean"]["test"]) >= {"rmse", "mae"}
    assert set(out["explanation"]["retrieval_user"]["test"]) == {"bleu4", "rouge1", "rouge2", "rougeL"}
    assert 1 <= out["review"]["summary"]["lead_words"]["settings"]["words"] <= 20
    assert set(out["review"]["rating"]) == {"global_mean", "user_item_bias"}
    # the explanation baseline's requests are the family's: one per review of the split with an explanation
    assert out["explanation"]["requests"]["test"] <= out["rating"]["requests"]["test"]


def test_without_scikit_surprise_svd_is_skipped_with_how_to_install_it(monkeypatch):
    monkeypatch.setattr(baselines, "has_surprise", lambda: False)
    reqs = [rating(u, i, float(1 + (u + i) % 5)) for u in range(3) for i in range(3)]
    out = baselines.rating_baselines(toy_data([1.0, 5.0, 3.0]), {"train": reqs, "val": reqs, "test": reqs}, 0)
    assert "pip install -e '.[baselines]'" in out["svd"]["skipped"] and "rmse" in out["global_mean"]["test"]
