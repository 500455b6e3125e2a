"""Metrics shared by task families, built on torchmetrics so they sync across processes."""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, Metric, SumMetric
from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG
from torchmetrics.retrieval.base import RetrievalMetric
from torchmetrics.functional.text import rouge_score
from torchmetrics.text import BLEUScore


def ranking_metrics(hit_ks: Sequence[int], ndcg_ks: Sequence[int]) -> dict[str, Metric]:
    """HR@k and NDCG@k for one relevant item per request (a request whose item is not ranked scores 0)."""
    metrics: dict[str, Metric] = {f"hr@{k}": RetrievalHitRate(top_k=k, empty_target_action="neg") for k in hit_ks}
    metrics.update({f"ndcg@{k}": RetrievalNormalizedDCG(top_k=k, empty_target_action="neg") for k in ndcg_ks})
    return metrics


def update_ranking(metrics: dict[str, Metric], ranked: torch.Tensor, target: torch.Tensor,
                   request_ids: torch.Tensor) -> None:
    """Feed ranked lists (B, k), best first, against one target item per request, into the retrieval metrics among
    `metrics` (slices have their own update)."""
    b, k = ranked.shape
    preds = torch.arange(k, 0, -1, device=ranked.device, dtype=torch.float).expand(b, k)
    hits = ranked == target[:, None]
    indexes = request_ids[:, None].expand(b, k)
    for metric in metrics.values():
        if isinstance(metric, RetrievalMetric):
            metric.update(preds.reshape(-1), hits.reshape(-1), indexes=indexes.reshape(-1))


def slice_metrics(name: str, ks: Sequence[int]) -> dict[str, Metric]:
    """HR@k and NDCG@k over a slice of the requests, and its size, as `name/hr@k`, `name/ndcg@k`, `name/requests`:
    sums of per-request values, so processes sync exactly; an empty slice reports nan."""
    metrics: dict[str, Metric] = {f"{name}/{kind}@{k}": MeanMetric() for kind in ("hr", "ndcg") for k in ks}
    metrics[f"{name}/requests"] = SumMetric()
    return metrics


def update_slice(metrics: dict[str, Metric], name: str, ks: Sequence[int], ranked: torch.Tensor,
                 target: torch.Tensor, in_slice: torch.Tensor) -> None:
    """Feed the requests of `ranked` (B, k), best first, whose `in_slice` is set into the slice `name`'s metrics."""
    ranked, target = ranked[in_slice], target[in_slice]
    metrics[f"{name}/requests"].update(torch.tensor(float(len(target))))
    hits = (ranked == target[:, None]).float()
    gains = hits / torch.log2(torch.arange(2, hits.shape[1] + 2, device=hits.device, dtype=torch.float))
    for k in ks:
        metrics[f"{name}/hr@{k}"].update(hits[:, :k].sum(1))
        metrics[f"{name}/ndcg@{k}"].update(gains[:, :k].sum(1))


class ROUGE(Metric):
    """Mean sentence ROUGE-1/2/L F-measures, computed offline (no stemmer, so no nltk data is needed).

    Kept as sums, so processes that decoded different numbers of batches sync with one all-reduce.
    """

    KEYS = ("rouge1", "rouge2", "rougeL")

    def __init__(self) -> None:
        super().__init__()
        for key in self.KEYS:
            self.add_state(key, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[str], target: list[str]) -> None:
        scores = rouge_score(preds, target, rouge_keys=self.KEYS)
        for key in self.KEYS:
            setattr(self, key, getattr(self, key) + scores[f"{key}_fmeasure"].double() * len(preds))
        self.count += len(preds)

    def compute(self) -> dict[str, torch.Tensor]:
        return {key: (getattr(self, key) / self.count).float() for key in self.KEYS}


class Perplexity(MeanMetric):
    """Corpus perplexity of teacher-forced targets: `update(nll_per_token, weight=tokens)` per target, exp of
    the token-weighted mean at the end (so batching and process count do not change it)."""

    def compute(self) -> torch.Tensor:
        return super().compute().exp()


_NON_WORD = re.compile(r"[^a-z0-9]+")


def words(text: str) -> str:
    """`text` lowercased with non-alphanumerics as spaces: the words torchmetrics' ROUGE scores, so BLEU
    does not score an uncased tokenizer's output (MiniLM) or detached punctuation down."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def text_metrics(bleu_n: int) -> dict[str, Metric]:
    """Corpus BLEU-n and ROUGE-1/2/L F-measures of generated against reference text, both over `words`."""
    return {f"bleu{bleu_n}": BLEUScore(n_gram=bleu_n), "rouge": ROUGE()}


def update_text(metrics: dict[str, Metric], generated: list[str], references: list[str]) -> None:
    for metric in metrics.values():
        if isinstance(metric, BLEUScore):
            metric.update([words(g) for g in generated], [[words(r)] for r in references])
        elif isinstance(metric, ROUGE):
            metric.update(generated, references)


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse_rating(text: str, low: float = 1.0, high: float = 5.0) -> float | None:
    """The first number in `text` when it lies in [low, high] ("5", "5.0", " 4 stars"), else None."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group())
    return value if low <= value <= high else None


def rating_metrics() -> dict[str, Metric]:
    """RMSE and MAE over parsed ratings, and the rate of outputs that did not parse (never dropped silently)."""
    return {"rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError(), "unparsed_rate": MeanMetric()}


def update_rating(metrics: dict[str, Metric], predicted: list[float | None], truth: torch.Tensor) -> None:
    parsed = torch.tensor([p is not None for p in predicted], device=truth.device)
    metrics["unparsed_rate"].update((~parsed).float())
    if parsed.any():
        values = torch.tensor([p for p in predicted if p is not None], device=truth.device, dtype=torch.float)
        metrics["rmse"].update(values, truth[parsed].float())
        metrics["mae"].update(values, truth[parsed].float())
