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
