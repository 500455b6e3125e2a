"""Metrics shared by task families, built on torchmetrics so they sync across processes."""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG


def ranking_metrics(hit_ks: Sequence[int], ndcg_ks: Sequence[int]) -> dict[str, Metric]:
    """HR@k and NDCG@k for one relevant item per request (a request whose item is not ranked scores 0)."""
    metrics: dict[str, Metric] = {f"hr@{k}": RetrievalHitRate(top_k=k, empty_target_action="neg") for k in hit_ks}
    metrics.update({f"ndcg@{k}": RetrievalNormalizedDCG(top_k=k, empty_target_action="neg") for k in ndcg_ks})
    return metrics


def update_ranking(metrics: dict[str, Metric], ranked: torch.Tensor, target: torch.Tensor,
                   request_ids: torch.Tensor) -> None:
    """Feed ranked lists (B, k), best first, against one target item per request."""
    b, k = ranked.shape
    preds = torch.arange(k, 0, -1, device=ranked.device, dtype=torch.float).expand(b, k)
    hits = ranked == target[:, None]
    indexes = request_ids[:, None].expand(b, k)
    for metric in metrics.values():
        metric.update(preds.reshape(-1), hits.reshape(-1), indexes=indexes.reshape(-1))
