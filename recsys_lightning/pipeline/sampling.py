"""Distributed, resumable sampling: training steps from the weighted task mix, exact evaluation shards.

Training: each epoch draws one global stream of examples (family weights, seed + epoch), cuts it into steps
(`batch_size` examples, or packed rows), deals the steps round-robin to the data-parallel ranks and can start
mid-epoch after a restart, so the data order does not depend on where a run was interrupted. Evaluation: each
rank takes a contiguous run of whole batches, nothing repeated or dropped, so metrics gathered over the ranks
equal one process's; a stream is read in dataset order or in a seeded order of whole requests (`request_order`),
longest rows first within each sample (`longest_first`), so that a batch pads little.
"""

from __future__ import annotations

import bisect
import itertools
import math
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from recsys_lightning.pipeline.packing import collate_packed, pack_steps
from recsys_lightning.infilling.layout import LAYOUT_FIELDS

Step = list[list[int]]  # one training step: rows, each a list of example indices (one example per row unpacked)
Planner = Callable[[list[int]], list[Step]]


def example_lengths(tables: Sequence[datasets.Dataset]) -> list[int]:
    """Token count of every laid-out example (Part A + Part B), datasets concatenated."""
    return [n for ds in tables for n in pc.list_value_length(ds.data.column("input_ids")).to_pylist()]


def prompt_lengths(ds: datasets.Dataset) -> list[int]:
    """Token count of every evaluation row's prompt: Part A and the tokens that open its blank."""
    part_a = pc.list_value_length(ds.data.column("input_ids")).to_numpy(zero_copy_only=False)
    if "part_b_ids" not in ds.column_names:
        return part_a.tolist()
    opening = pc.list_value_length(ds.data.column("part_b_ids")).fill_null(0).to_numpy(zero_copy_only=False)
    return (part_a + opening).tolist()


def one_per_row(order: Sequence[int], batch_size: int) -> list[Step]:
    """Unpacked steps: `batch_size` consecutive examples of the stream, one per row."""
    return [[[i] for i in order[s: s + batch_size]] for s in range(0, len(order), batch_size)]


class StepSampler(DistributedSampler):
    """Yields this rank's training steps (lists of rows of example indices), epoch by epoch, resumable.

    A `DistributedSampler` subclass so that Lightning keeps it instead of wrapping it in its own, which would
    neither know the task mix nor resume. `weights` are per example (drawn with replacement, `num_samples` per
    epoch); `plan` cuts the epoch's stream into steps.
    """

    def __init__(self, weights: torch.Tensor, plan: Planner, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(range(len(weights)), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.weights = weights
        self.plan = plan
        self._skip = 0
        self._steps: tuple[int, list[Step]] | None = None

    def steps(self) -> list[Step]:
        """This epoch's steps for this rank, the same on every rank count that divides the global stream."""
        if self._steps is None or self._steps[0] != self.epoch:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator)
            plan = self.plan(order.tolist())
            usable = len(plan) - len(plan) % self.num_replicas  # every rank takes the same number of steps
            self._steps = (self.epoch, plan[self.rank: usable: self.num_replicas])
        return self._steps[1]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def resume(self, epoch: int, steps_done: int) -> None:
        """Start the next iteration after `steps_done` steps of `epoch` (at the next epoch if that one was over)."""
        self.set_epoch(epoch)
        if steps_done >= len(self.steps()):
            self.set_epoch(epoch + 1)
        else:
            self._skip = steps_done

    def __len__(self) -> int:
        return len(self.steps())

    def __iter__(self) -> Iterator[Step]:
        skip, self._skip = self._skip, 0
        return iter(self.steps()[skip:])


class StepRows(Dataset):
    """Looks up the examples of one step: `dataset[step]` is a list of rows of examples.

    Indices run over the task tables concatenated; each table is read once per step with all its indices (one
    Arrow take) and only the laid-out columns the collator needs, which is what keeps a GPU fed with packed rows
    of short examples.
    """

    def __init__(self, tables: Sequence[datasets.Dataset]) -> None:
        self.tables = [t.select_columns(list(LAYOUT_FIELDS)) for t in tables]
        self.starts = [0, *itertools.accumulate(len(t) for t in self.tables)]

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, step: Step) -> list[list[dict[str, Any]]]:
        wanted = sorted({i for row in step for i in row})
        examples: dict[int, dict[str, Any]] = {}
        for t, table in enumerate(self.tables):
            lo, hi = bisect.bisect_left(wanted, self.starts[t]), bisect.bisect_left(wanted, self.starts[t + 1])
            if lo == hi:
                continue
            columns = table[[i - self.starts[t] for i in wanted[lo:hi]]]
            for k, i in enumerate(wanted[lo:hi]):
                examples[i] = {name: values[k] for name, values in columns.items()}
        return [[examples[i] for i in row] for row in step]


class ResumableLoader(DataLoader):
    """A training DataLoader Lightning saves in checkpoints (`state_dict`) and restores mid-epoch.

    The position is the number of steps the training loop has finished (`steps_done`), not what the loader has
    fetched: Lightning and the workers fetch ahead of the loop.
    """

    def __init__(self, *args: Any, steps_done: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps_done = steps_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "steps": self.steps_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume(state["epoch"], state["steps"])


def training_loader(tables: Sequence[datasets.Dataset], weights: Sequence[float], lengths: Sequence[int],
                    batch_size: int, pack_length: int | None, pad_id: int, seed: int, shard: tuple[int, int],
                    num_workers: int, steps_done: Callable[[], int]) -> ResumableLoader:
    """The training loader of a task mix: dataset `i` is drawn in proportion to `weights[i]`, one epoch = as many
    draws as examples; `pack_length` packs examples into `batch_size` rows of that many tokens."""
    per_example = torch.cat([torch.full((len(ds),), w / len(ds)) for w, ds in zip(weights, tables)])
    if pack_length:
        plan: Planner = partial(pack_steps, lengths=lengths, rows=batch_size, row_length=pack_length)
    else:
        plan = partial(one_per_row, batch_size=batch_size)
    sampler = StepSampler(per_example, plan, seed, num_replicas=shard[0], rank=shard[1])
    return ResumableLoader(StepRows(tables), batch_size=None, sampler=sampler,
                           collate_fn=partial(collate_packed, pad_id=pad_id, length=pack_length,
                                              num_rows=batch_size if pack_length else None),
                           num_workers=num_workers, steps_done=steps_done)


class ContiguousShard(DistributedSampler):
    """Evaluation sampler: rank r reads the r-th contiguous run of whole batches, nothing padded or repeated.

    Batches are the ones a single process forms, so decoding (and the metrics) match it exactly; shards may be
    uneven by one batch. `order` (row indices) replaces the dataset's own order.
    """

    def __init__(self, length: int, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 order: Sequence[int] | None = None) -> None:
        if length < num_replicas:
            raise ValueError(f"an evaluation stream has {length} requests, fewer than the {num_replicas} processes")
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=False)
        batches = math.ceil(length / batch_size)
        first, last = (batches * r // num_replicas for r in (rank, rank + 1))
        rows = range(length) if order is None else order
        self.indices = rows[first * batch_size: min(last * batch_size, length)]

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def request_order(request_ids: Sequence[int], seed: int) -> list[int]:
    """Row indices with each request's rows kept together and the requests in a seeded random order, so that
    the first batches (`trainer.limit_val_batches`) are a uniform sample of the requests, not the first users."""
    ids = np.asarray(request_ids, dtype=np.int64)
    if len(ids) == 0:
        return []
    rank = np.random.default_rng(seed).permutation(int(ids.max()) + 1)
    return np.lexsort((np.arange(len(ids)), rank[ids])).tolist()


def longest_first(order: Sequence[int], lengths: Sequence[int], cuts: Sequence[int] = (),
                  requests: Sequence[int] | None = None) -> list[int]:
    """`order` with each run between the row positions `cuts` sorted by descending `lengths` (stable): rows of
    similar length share a batch, so a batch pads little, and the longest batch runs first (memory fails early).
    Cuts keep a sample's rows within it (the first `limit_val_batches` batches stay the same rows); `requests`
    (a request id per row) sorts whole requests by their longest row, so a request's rows stay together."""
    rows, size = np.asarray(order, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    if requests is not None and len(size):
        ids = np.asarray(requests, dtype=np.int64)
        longest = np.zeros(int(ids.max()) + 1, dtype=np.int64)
        np.maximum.at(longest, ids, size)
        size = longest[ids]
    bounds = sorted({0, len(rows), *(min(max(c, 0), len(rows)) for c in cuts)})
    return [int(i) for a, b in zip(bounds, bounds[1:]) for i in rows[a:b][np.argsort(-size[rows[a:b]], kind="stable")]]


def eval_batch_size(length: int, batch_size: int, world: int) -> int:
    """The batch of an evaluation stream: smaller when the stream has fewer batches than ranks, so that every
    rank decodes (metrics sync at the end of the epoch on every rank)."""
    return batch_size if math.ceil(length / batch_size) >= world else max(1, length // world)


def sample_cuts(length: int, batch_size: int, world: int, limit: int | float | None) -> list[int]:
    """Row positions where each rank's first `limit` batches (Lightning's `limit_*_batches`: a count, or a
    fraction of the rank's batches) begin and end; none when every batch is read."""
    if limit is None or isinstance(limit, float) and limit >= 1.0:
        return []
    size = eval_batch_size(length, batch_size, world)
    batches = math.ceil(length / size)
    cuts = []
    for rank in range(world):
        first, last = batches * rank // world, batches * (rank + 1) // world
        read = int(limit) if isinstance(limit, int) else int((last - first) * limit)
        cuts += [first * size, min(first + read, last) * size]
    return cuts


def evaluation_loader(dataset: Dataset, batch_size: int, shard: tuple[int, int], collate_fn: Callable[[list], Any],
                      num_workers: int, order: Sequence[int] | None = None) -> DataLoader:
    """An evaluation stream's loader for this rank, reading rows in `order` (default: the dataset's) in batches
    of `eval_batch_size`."""
    length = len(dataset)  # type: ignore[arg-type]
    size = eval_batch_size(length, batch_size, shard[0])
    return DataLoader(dataset, batch_size=size, sampler=ContiguousShard(length, size, *shard, order=order),
                      collate_fn=collate_fn, num_workers=num_workers)
