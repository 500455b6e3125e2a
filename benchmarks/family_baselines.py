"""Non-learned and classic baselines of the rating, explanation and review families, scored by the families' own
requests and metrics: what a trained model must beat (issue 51).

Requests come from the registered families themselves (`tasks/rating.py`, `tasks/explanation.py`,
`tasks/review.py`: the 80/10/10 review split of `requests.review_rows`, the explanation extraction of
`data/explanations.py`, reviews cut to the family's `max_review_words`), and every score from `metrics.py`
(`rating_metrics`/`update_rating`, `text_metrics`/`update_text`), over every request of a split (the trainer's
`max_eval_requests` subsets are seeded samples of the same requests). Models are fitted on the training split;
a baseline with settings tries each on validation, keeps the best (lowest RMSE, highest ROUGE-L) and reads the
test split once, with those settings.

- rating: `global_mean`; `user_item_bias` (mu + b_u + b_i, L2-regularised, alternating least squares; the two
  regularisation weights chosen on validation); `svd`, scikit-surprise's biased matrix factorisation
  (factors, epochs, learning rate and regularisation chosen on validation; `pip install -e '.[baselines]'`,
  skipped with a note without it). Predictions are continuous, clipped to the rating scale.
- explanation: `retrieval_item` (the item's training explanation whose feature word is the hint, else the item's
  most frequent one, else the most frequent training explanation with the hint); `retrieval_user` (the user's own
  training explanation with the hint, else the one of theirs most similar to `retrieval_item`'s sentence, by
  word-count cosine; `retrieval_item`'s where the user has none).
- review: `lead_words` (the first N words of the review the prompt shows, N chosen on validation) and
  `item_frequent_summary` (the most frequent summary of the item's training reviews); its rating target gets
  the rating baselines, on the review family's requests.

    python benchmarks/family_baselines.py --out docs/results/baselines_musical_instruments.json
    python benchmarks/family_baselines.py --format movielens --root ../shared/data/ml-100k \\
        --out docs/results/baselines_ml100k.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.data.explanations import WORD
from recsys_lightning.data.indexing import build_index
from recsys_lightning.data.schema import RecData
from recsys_lightning.family import FamilyContext, Request, TaskFamily
from recsys_lightning.metrics import rating_metrics, text_metrics, update_rating, update_text
from recsys_lightning.pipeline.datamodule import DEMO_ROOT
from recsys_lightning.registry import discover, get_task

SPLITS = ("train", "val", "test")
INSTALL = "pip install -e '.[baselines]'"
BIAS_GRID = (0.0, 1.0, 3.0, 10.0, 25.0, 50.0, 100.0)
SVD_GRID = {"n_factors": (20, 100), "n_epochs": (20, 40, 80), "lr_all": (0.005, 0.01), "reg_all": (0.05, 0.1, 0.2)}
LEAD_GRID = tuple(range(1, 21))

Predict = Callable[[Request], Any]


# --- requests and scoring ------------------------------------------------------------------------------------
def family_requests(name: str, data: RecData, seed: int, **options: Any) -> dict[str, list[Request]]:
    """The registered family's own requests of every split (set up without a tokenizer: requests need none)."""
    discover()
    family: TaskFamily = get_task(name)(**options)
    family.context = FamilyContext(data, build_index("sequential", data, seed), None, seed)  # type: ignore[arg-type]
    return {split: list(family.requests(data, split)) for split in SPLITS}


def rating_scores(requests: Sequence[Request], predict: Predict) -> dict[str, float]:
    """RMSE, MAE (and the unparsed rate, 0 here) of `predict` over rating requests, by `metrics.py`."""
    metrics = rating_metrics()
    truth = torch.tensor([r.meta["rating_value"] for r in requests])
    update_rating(metrics, [predict(r) for r in requests], truth)
    return flat(metrics)


def text_scores(requests: Sequence[Request], predict: Predict, bleu_n: int) -> dict[str, float]:
    """BLEU-n and ROUGE-1/2/L F of `predict` against each request's reference, by `metrics.py`."""
    metrics = text_metrics(bleu_n)
    update_text(metrics, [predict(r) for r in requests], [r.meta["reference"] for r in requests])
    return flat(metrics)


def flat(metrics: dict[str, Any]) -> dict[str, float]:
    """Computed torchmetrics as one flat dict of rounded floats (ROUGE's three values by their own names)."""
    out: dict[str, float] = {}
    for name, metric in metrics.items():
        value = metric.compute()
        values = value if isinstance(value, dict) else {name: value}
        out.update({k: round(float(v), 6) for k, v in values.items()})
    return out


@dataclass
class Choice:
    """A baseline's settings chosen on validation, with its validation and (once) test scores."""

    settings: dict[str, Any]
    val: dict[str, float]
    test: dict[str, float]

    def asdict(self) -> dict[str, Any]:
        return {"settings": self.settings, "val": self.val, "test": self.test}


def choose(grid: Iterable[dict[str, Any]], build: Callable[..., Predict], score: Callable[[Sequence[Request], Predict],
           dict[str, float]], key: Callable[[dict[str, float]], float], requests: dict[str, list[Request]]) -> Choice:
    """Try every setting on validation, keep the best by `key` (lower is better), then score test once."""
    tried = [(settings, build(**settings)) for settings in grid]
    scored = [(settings, predict, score(requests["val"], predict)) for settings, predict in tried]
    settings, predict, val = min(scored, key=lambda s: key(s[2]))
    return Choice(settings, val, score(requests["test"], predict))


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, as keyword dicts."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


# --- rating --------------------------------------------------------------------------------------------------
@dataclass
class Ratings:
    """Training triples (user, item, rating) and the rating scale."""

    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    low: float
    high: float

    @classmethod
    def of(cls, data: RecData, train: Sequence[Request]) -> Ratings:
        scale = data.rating[~np.isnan(data.rating)]
        return cls(np.array([r.meta["user_id"] for r in train]), np.array([r.meta["item_id"] for r in train]),
                   np.array([r.meta["rating_value"] for r in train], dtype=np.float64),
                   float(scale.min()), float(scale.max()))

    def clip(self, value: float) -> float:
        return float(min(max(value, self.low), self.high))


def global_mean(ratings: Ratings) -> Predict:
    """Every request gets the training mean."""
    mean = float(ratings.values.mean())
    return lambda r: mean


def user_item_bias(ratings: Ratings, num_users: int, num_items: int, reg_user: float, reg_item: float,
                   sweeps: int = 15) -> Predict:
    """mu + b_u + b_i fitted by alternating closed-form ridge updates (users and items absent from training: 0)."""
    mu = ratings.values.mean()
    b_user, b_item = np.zeros(num_users), np.zeros(num_items)
    n_user = np.bincount(ratings.users, minlength=num_users)
    n_item = np.bincount(ratings.items, minlength=num_items)
    for _ in range(sweeps):
        resid = ratings.values - mu - b_user[ratings.users]
        b_item = np.bincount(ratings.items, resid, num_items) / (n_item + reg_item + 1e-12)
        resid = ratings.values - mu - b_item[ratings.items]
        b_user = np.bincount(ratings.users, resid, num_users) / (n_user + reg_user + 1e-12)
    return lambda r: ratings.clip(mu + b_user[r.meta["user_id"]] + b_item[r.meta["item_id"]])


def surprise_svd(ratings: Ratings, seed: int, **settings: Any) -> Predict:
    """scikit-surprise's SVD (biased MF, SGD) fitted on the training triples; its predictions clip to the scale."""
    import pandas as pd
    from surprise import SVD, Dataset, Reader

    frame = pd.DataFrame({"u": ratings.users, "i": ratings.items, "r": ratings.values})
    trainset = Dataset.load_from_df(frame, Reader(rating_scale=(ratings.low, ratings.high))).build_full_trainset()
    model = SVD(random_state=seed, **settings).fit(trainset)
    return lambda r: float(model.predict(r.meta["user_id"], r.meta["item_id"]).est)


def has_surprise() -> bool:
    try:
        import surprise  # noqa: F401
    except ImportError:
        return False
    return True


def rating_baselines(data: RecData, requests: dict[str, list[Request]], seed: int, svd: bool = True
                     ) -> dict[str, dict[str, Any]]:
    """Global mean, user + item bias and SVD, fitted on the training requests, chosen on validation by RMSE."""
    ratings = Ratings.of(data, requests["train"])
    rmse: Callable[[dict[str, float]], float] = lambda s: s["rmse"]
    out = {"global_mean": choose([{}], lambda: global_mean(ratings), rating_scores, rmse, requests).asdict(),
           "user_item_bias": choose(grid(reg_user=BIAS_GRID, reg_item=BIAS_GRID),
                                    lambda **s: user_item_bias(ratings, data.num_users, data.num_items, **s),
                                    rating_scores, rmse, requests).asdict()}
    if not svd:
        return out
    if not has_surprise():
        print(f"svd skipped: scikit-surprise is not installed ({INSTALL})", file=sys.stderr)
        out["svd"] = {"skipped": f"scikit-surprise is not installed: {INSTALL}"}
        return out
    out["svd"] = choose(grid(**SVD_GRID), lambda **s: surprise_svd(ratings, seed, **s), rating_scores, rmse,
                        requests).asdict()
    return out


# --- explanation ---------------------------------------------------------------------------------------------
def most_frequent(texts: Sequence[str]) -> str | None:
    """The most frequent text, the earliest on ties; None for none."""
    return Counter(texts).most_common(1)[0][0] if texts else None


def cosine(a: Counter[str], b: Counter[str]) -> float:
    """Cosine similarity of two word-count vectors (0 where either is empty)."""
    dot = sum(n * b[w] for w, n in a.items())
    norm = math.sqrt(sum(n * n for n in a.values()) * sum(n * n for n in b.values()))
    return dot / norm if norm else 0.0


def bag(text: str) -> Counter[str]:
    return Counter(w.lower() for w in WORD.findall(text))


@dataclass
class ExplanationPool:
    """Training explanations by item, by user and by feature word, in training order."""

    by_item: dict[int, list[tuple[str, str]]]
    by_user: dict[int, list[tuple[str, str]]]
    by_feature: dict[str, list[str]]
    overall: str

    @classmethod
    def of(cls, train: Sequence[Request]) -> ExplanationPool:
        by_item, by_user, by_feature = defaultdict(list), defaultdict(list), defaultdict(list)
        for r in train:
            pair = (r.meta["reference"], str(r.values["feature"]))
            by_item[r.meta["item_id"]].append(pair)
            by_user[r.meta["user_id"]].append(pair)
            by_feature[pair[1]].append(pair[0])
        return cls(dict(by_item), dict(by_user), dict(by_feature), most_frequent([r.meta["reference"] for r in train]))

    def item_sentence(self, request: Request) -> str:
        """The item's training explanation with the hint, else its most frequent, else the hint's most frequent."""
        hint = str(request.values["feature"])
        pairs = self.by_item.get(request.meta["item_id"], [])
        found = most_frequent([s for s, f in pairs if f == hint]) or most_frequent([s for s, _ in pairs])
        return found or most_frequent(self.by_feature.get(hint, [])) or self.overall

    def user_sentence(self, request: Request) -> str:
        """The user's own training explanation with the hint, else theirs most like the item's sentence."""
        hint = str(request.values["feature"])
        pairs = self.by_user.get(request.meta["user_id"], [])
        item = self.item_sentence(request)
        if not pairs:
            return item
        with_hint = [s for s, f in pairs if f == hint]
        target = bag(item)
        return max(with_hint or [s for s, _ in pairs], key=lambda s: cosine(bag(s), target))


def explanation_baselines(requests: dict[str, list[Request]]) -> dict[str, dict[str, Any]]:
    """Item and user retrieval of training explanations (no settings: validation and test are both reported)."""
    pool = ExplanationPool.of(requests["train"])
    rouge_l: Callable[[dict[str, float]], float] = lambda s: -s["rougeL"]
    score = lambda reqs, predict: text_scores(reqs, predict, 4)
    return {"retrieval_item": choose([{}], lambda: pool.item_sentence, score, rouge_l, requests).asdict(),
            "retrieval_user": choose([{}], lambda: pool.user_sentence, score, rouge_l, requests).asdict()}


# --- review summarization ------------------------------------------------------------------------------------
def lead_words(words: int) -> Predict:
    """The first `words` words of the review the prompt shows."""
    return lambda r: " ".join(str(r.values["review"]).split()[:words])


def item_frequent_summary(train: Sequence[Request]) -> Predict:
    """The most frequent summary of the item's training reviews (the overall most frequent for an item without)."""
    by_item: dict[int, list[str]] = defaultdict(list)
    for r in train:
        by_item[r.meta["item_id"]].append(r.meta["reference"])
    overall = most_frequent([r.meta["reference"] for r in train]) or ""
    return lambda r: most_frequent(by_item.get(r.meta["item_id"], [])) or overall


def review_baselines(data: RecData, requests: dict[str, list[Request]], seed: int, svd: bool = True
                     ) -> dict[str, dict[str, Any]]:
    """Lead-N (N by validation ROUGE-L) and the item's most frequent summary; the rating baselines for its stars."""
    rouge_l: Callable[[dict[str, float]], float] = lambda s: -s["rougeL"]
    score = lambda reqs, predict: text_scores(reqs, predict, 2)
    summary = {"lead_words": choose(grid(words=LEAD_GRID), lead_words, score, rouge_l, requests).asdict(),
               "item_frequent_summary": choose([{}], lambda: item_frequent_summary(requests["train"]), score,
                                               rouge_l, requests).asdict()}
    return {"summary": summary, "rating": rating_baselines(data, requests, seed, svd)}


# --- command line --------------------------------------------------------------------------------------------
def supported(data: RecData) -> list[str]:
    """The families a dataset has data for: rating with ratings, explanation and review with review text."""
    families = [] if np.isnan(data.rating).all() else ["rating"]
    return families + (["explanation", "review"] if families and any(data.review) else [])


def run(data: RecData, families: Sequence[str], seed: int, svd: bool = True) -> dict[str, Any]:
    """Every asked family's baselines, with each family's request counts per split."""
    out: dict[str, Any] = {}
    for name in families:
        requests = family_requests(name, data, seed)
        counts = {split: len(reqs) for split, reqs in requests.items()}
        if name == "rating":
            out[name] = {"requests": counts, **rating_baselines(data, requests, seed, svd)}
        elif name == "explanation":
            out[name] = {"requests": counts, **explanation_baselines(requests)}
        else:
            out[name] = {"requests": counts, **review_baselines(data, requests, seed, svd)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="amazon_reviews", help="data.format of the dataset")
    parser.add_argument("--root", type=Path, default=None, help="dataset folder (default: the bundled demo data)")
    parser.add_argument("--families", nargs="+", choices=("rating", "explanation", "review"),
                        help="default: every family the data supports")
    parser.add_argument("--seed", type=int, default=0, help="data.seed: the review split's seed")
    parser.add_argument("--no-svd", action="store_true", help="leave out scikit-surprise's SVD")
    parser.add_argument("--out", type=Path, required=True, help="where the results JSON is written")
    args = parser.parse_args()
    start = time.time()
    data = load_dataset(args.format, args.root or DEMO_ROOT, args.seed)
    families = args.families or supported(data)
    results = run(data, families, args.seed, not args.no_svd)
    kept = {"command": "python " + " ".join(sys.argv), "wall_seconds": round(time.time() - start, 1),
            "dataset": data.stats(), "seed": args.seed, "families": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(kept, indent=2) + "\n")
    print(json.dumps({"dataset": data.name, **{f: summary(r) for f, r in results.items()}}))


def summary(family: dict[str, Any]) -> dict[str, Any]:
    """Each baseline's test metrics (nested blocks flattened one level), for the printed line."""
    out: dict[str, Any] = {}
    for name, block in family.items():
        if name == "requests" or not isinstance(block, dict):
            continue
        out[name] = block["test"] if "test" in block else summary(block)
    return out


if __name__ == "__main__":
    main()
