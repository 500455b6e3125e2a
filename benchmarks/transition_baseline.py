"""A count-based first-order transition baseline (a Markov chain over items) under the protocol of
docs/results.md: leave-one-out, the whole catalog ranked, HR@5 / NDCG@5 / HR@10 / NDCG@10.

It reads the dataset with the trainer's own adapter and split, counts item -> next item over the training
part of every sequence (all but the last two items), and ranks every item by its count after the
history's last item, ties broken by training popularity (the smoothed p(item | last item) of
`data/transitions.py`); `--context c --decay d` ranks by that p mixed over the history's last c items, and
`--window w` counts an item up to w steps after another (weighted d per step), and `--counts known` counts the
validation items too for the test split (what the sequential family's `prior: {counts: known}` does). It says how much
of a split's score a model can reach from the last item alone, and whether a gap between validation and test is in
the data; its `followers` block says how often a split's target followed the history's last item in training at all.

    python benchmarks/transition_baseline.py --root data/toys --out toys_transition.json
    python benchmarks/transition_baseline.py --root data/toys --context 5 --decay 0.7 --window 5 --out ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.data.schema import RecData
from recsys_lightning.data.splits import leave_one_out
from recsys_lightning.data.transitions import Transitions
from recsys_lightning.metrics import ranking_metrics, update_ranking


def transition_counts(data: RecData) -> tuple[list[dict[int, int]], np.ndarray]:
    """Per item, the counts of the items that follow it, and every item's count, over the training parts."""
    table = Transitions(data)
    return [table.followers(item) for item in range(data.num_items)], table.popularity.long().numpy()


def cuts(data: RecData, split: str) -> Iterator[tuple[int, np.ndarray, int]]:
    """(user, history, target) of every user with a target in `split`."""
    for user in range(data.num_users):
        cut = leave_one_out(data.sequence(user), split)
        if cut is not None:
            yield user, cut[0], cut[1]


def rank(history: np.ndarray, table: Transitions, k: int, exclude_history: bool, context: int = 1,
         decay: float = 1.0) -> torch.Tensor:
    """The `k` best items after `history` by p(item | its last `context` items): with one, transition count from
    the last item, then popularity."""
    scores = table.log_prior([history.tolist()], 1.0, context, decay)[0]
    if exclude_history:
        scores[torch.from_numpy(history)] = float("-inf")
    return scores.topk(k).indices


def evaluate(data: RecData, exclude_history: bool, splits: tuple[str, ...] = ("val", "test"),
             ks: tuple[int, ...] = (5, 10), context: int = 1, decay: float = 1.0,
             window: int = 1, known: bool = False) -> dict[str, dict[str, float]]:
    """Per split, HR@k and NDCG@k of the transition ranking over every user with a target there; `known` counts
    every interaction before the split's targets (the training parts, and for 'test' the validation items)."""
    results, tables = {}, {}
    for split in splits:
        counted = split if known else "val"  # without `known` every split ranks by the training parts' counts
        if counted not in tables:
            tables[counted] = Transitions(data, window, decay, counted)
        table = tables[counted]
        metrics = ranking_metrics(ks, ks)
        for user, history, target in cuts(data, split):
            ranked = rank(history, table, max(ks), exclude_history, context, decay)
            update_ranking(metrics, ranked[None], torch.tensor([target]), torch.tensor([user]))
        results[split] = {name: round(float(metric.compute()), 6) for name, metric in sorted(metrics.items())}
    return results


def followers(data: RecData, splits: tuple[str, ...] = ("val", "test")) -> dict[str, dict[str, float]]:
    """Per split, the share of users whose target followed their history's last item in training (`seen`), was
    its most frequent follower, ties included (`top`), and, of the seen ones, the share seen once (`once`)."""
    follows, _ = transition_counts(data)
    results = {}
    for split in splits:
        lasts = [(follows[int(history[-1])], int(target)) for _, history, target in cuts(data, split)]
        counts = [nxt.get(target, 0) for nxt, target in lasts]
        top = sum(1 for (nxt, _), n in zip(lasts, counts) if n and n == max(nxt.values()))
        seen = sum(1 for n in counts if n)
        results[split] = {"seen": round(seen / len(lasts), 6), "top": round(top / len(lasts), 6),
                          "once": round(sum(1 for n in counts if n == 1) / max(seen, 1), 6)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="an S3-Rec / P5 dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="where the results JSON is written")
    parser.add_argument("--keep-history", action="store_true",
                        help="leave the history's items rankable (datasets with repeat visits, as Yelp)")
    parser.add_argument("--context", type=int, default=1, help="how many last history items the ranking mixes")
    parser.add_argument("--decay", type=float, default=1.0, help="the mixture's weight ratio, one item back")
    parser.add_argument("--window", type=int, default=1, help="count an item up to this many steps after another")
    parser.add_argument("--counts", choices=("training", "known"), default="training",
                        help="known: the test split's counts take in the validation items too")
    args = parser.parse_args()
    start = time.time()
    data = load_dataset("s3rec", args.root, seed=0)
    metrics = evaluate(data, not args.keep_history, context=args.context, decay=args.decay, window=args.window,
                       known=args.counts == "known")
    kept = {"command": "python " + " ".join(sys.argv), "wall_seconds": round(time.time() - start, 1),
            "dataset": data.stats(), "exclude_history": not args.keep_history, "context": args.context,
            "decay": args.decay, "window": args.window, "counts": args.counts, "metrics": metrics,
            "followers": followers(data)}
    args.out.write_text(json.dumps(kept, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
