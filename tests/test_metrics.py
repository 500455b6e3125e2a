import math

import torch

from recsys_lightning.metrics import ranking_metrics, update_ranking


def test_hit_rate_and_ndcg_on_known_ranks():
    metrics = ranking_metrics((1, 5), (5,))
    ranked = torch.tensor([[3, 1, 2, 9, 8], [4, 5, 6, 7, 0], [1, 2, 3, 4, 5]])
    target = torch.tensor([3, 7, 42])  # rank 1, rank 4, not ranked
    update_ranking(metrics, ranked, target, torch.arange(3))
    values = {k: float(m.compute()) for k, m in metrics.items()}
    assert math.isclose(values["hr@1"], 1 / 3, rel_tol=1e-6)
    assert math.isclose(values["hr@5"], 2 / 3, rel_tol=1e-6)
    assert math.isclose(values["ndcg@5"], (1 + 1 / math.log2(5)) / 3, rel_tol=1e-6)


def test_padding_items_never_hit():
    metrics = ranking_metrics((5,), ())
    update_ranking(metrics, torch.tensor([[2, -1, -1]]), torch.tensor([5]), torch.tensor([0]))
    assert float(metrics["hr@5"].compute()) == 0.0


def test_rating_parsing_is_robust():
    from recsys_lightning.metrics import parse_rating

    assert parse_rating("5") == 5.0 and parse_rating("5.0") == 5.0 and parse_rating(" 4 stars") == 4.0
    assert parse_rating("five") is None and parse_rating("9") is None and parse_rating("") is None


def test_unparsed_ratings_are_reported_as_a_rate_not_dropped():
    from recsys_lightning.metrics import rating_metrics, update_rating

    metrics = rating_metrics()
    update_rating(metrics, [5.0, None, 3.0, None], torch.tensor([4.0, 2.0, 1.0, 5.0]))
    assert float(metrics["unparsed_rate"].compute()) == 0.5
    assert math.isclose(float(metrics["mae"].compute()), 1.5)
    assert math.isclose(float(metrics["rmse"].compute()), math.sqrt((1 + 4) / 2), rel_tol=1e-6)


def test_text_metrics_score_identical_text_as_one():
    from recsys_lightning.metrics import text_metrics, update_text

    metrics = text_metrics(4)
    text = "the strings sound bright and stay in tune for weeks"
    update_text(metrics, [text], [text])
    assert math.isclose(float(metrics["bleu4"].compute()), 1.0, rel_tol=1e-6)
    assert all(math.isclose(float(v), 1.0, rel_tol=1e-6) for v in metrics["rouge"].compute().values())


def test_bleu_ignores_case_and_punctuation_as_rouge_does():
    from recsys_lightning.metrics import text_metrics, update_text

    metrics = text_metrics(4)
    update_text(metrics, ["the strings sound bright , and stay in tune for weeks ."],
                ["The strings sound bright, and stay in tune for weeks."])
    assert math.isclose(float(metrics["bleu4"].compute()), 1.0, rel_tol=1e-6)
    assert all(math.isclose(float(v), 1.0, rel_tol=1e-6) for v in metrics["rouge"].compute().values())
    update_text(metrics, ["tuners slip after a week"], ["the strings sound bright and stay in tune"])
    assert float(metrics["bleu4"].compute()) < 1.0


def test_rouge_sums_equal_torchmetrics_sentence_average_across_updates():
    from torchmetrics.text import ROUGEScore

    from recsys_lightning.metrics import ROUGE

    preds = ["the strings sound bright", "a solid stand for the price", "cable works"]
    refs = ["strings sound very bright", "solid stand for a low price", "the cable broke"]
    ours = ROUGE()
    for p, r in zip(preds, refs):
        ours.update([p], [r])
    reference = ROUGEScore(rouge_keys=ROUGE.KEYS)
    reference.update(preds, refs)
    expected = reference.compute()
    for key, value in ours.compute().items():
        assert math.isclose(float(value), float(expected[f"{key}_fmeasure"]), rel_tol=1e-5)


def test_a_slice_holding_every_request_equals_the_overall_metrics_and_a_part_counts_only_its_own():
    from recsys_lightning.metrics import slice_metrics, update_slice

    ranked = torch.tensor([[3, 1, 2, 9, 8], [4, 5, 6, 7, 0], [1, 2, 3, 4, 5], [7, 3, 1, 0, 2]])
    target = torch.tensor([3, 7, 42, 1])  # ranks 1, 4, none, 3
    overall = ranking_metrics((1, 5), (1, 5))
    update_ranking(overall, ranked, target, torch.arange(4))
    whole, part, empty = (slice_metrics(name, (1, 5)) for name in ("whole", "part", "empty"))
    for half in (slice(0, 2), slice(2, 4)):  # two batches
        update_slice(whole, "whole", (1, 5), ranked[half], target[half], torch.ones(2, dtype=torch.bool))
        update_slice(part, "part", (1, 5), ranked[half], target[half], torch.tensor([False, True]))
        update_slice(empty, "empty", (1, 5), ranked[half], target[half], torch.zeros(2, dtype=torch.bool))
    for key, metric in overall.items():
        assert math.isclose(float(whole[f"whole/{key}"].compute()), float(metric.compute()), rel_tol=1e-6)
    assert float(whole["whole/requests"].compute()) == 4 and float(part["part/requests"].compute()) == 2
    assert math.isclose(float(part["part/hr@5"].compute()), 1.0, rel_tol=1e-6)  # requests 2 and 4: ranks 4 and 3
    assert math.isclose(float(part["part/ndcg@5"].compute()), (1 / math.log2(5) + 1 / math.log2(4)) / 2, rel_tol=1e-6)
    assert float(part["part/hr@1"].compute()) == 0.0
    assert float(empty["empty/requests"].compute()) == 0 and math.isnan(float(empty["empty/hr@5"].compute()))
