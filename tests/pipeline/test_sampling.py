"""Training steps: weighted mix, dealt to ranks, resumable mid-epoch; evaluation shards: exact and contiguous,
in the dataset's order or a seeded order of whole requests."""

from __future__ import annotations

from functools import partial

import datasets
import pytest
import torch

from recsys_lightning.pipeline.sampling import (ContiguousShard, StepSampler, evaluation_loader, longest_first, one_per_row,
                                                request_order, sample_cuts,
                                           training_loader)


def sampler(world: int = 1, rank: int = 0, batch: int = 4, n: int = 50, seed: int = 3) -> StepSampler:
    return StepSampler(torch.ones(n), partial(one_per_row, batch_size=batch), seed, num_replicas=world, rank=rank)


def flat(steps) -> list[int]:
    return [i for step in steps for row in step for i in row]


def test_every_rank_takes_the_same_number_of_steps_and_together_they_read_the_single_process_stream():
    single = list(sampler(batch=4))
    for world in (2, 3):
        shards = [list(sampler(world, rank, batch=4)) for rank in range(world)]
        assert len({len(s) for s in shards}) == 1
        # step s of every rank together = the global steps s * world ... s * world + world - 1
        for s in range(len(shards[0])):
            together = [shards[rank][s] for rank in range(world)]
            assert together == single[s * world: (s + 1) * world]


def test_epochs_are_reproducible_and_differ():
    a, b = sampler(), sampler()
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_resume_continues_mid_epoch_then_starts_the_next_epoch_whole():
    reference = sampler()
    reference.set_epoch(2)
    epoch2 = list(reference)
    reference.set_epoch(3)
    epoch3 = list(reference)

    resumed = sampler()
    resumed.resume(2, 5)
    assert list(resumed) == epoch2[5:]
    resumed.set_epoch(3)
    assert list(resumed) == epoch3

    at_end = sampler()
    at_end.resume(2, len(epoch2))  # a checkpoint written at the end of epoch 2
    assert at_end.epoch == 3 and list(at_end) == epoch3


def laid_out(n: int) -> datasets.Dataset:
    """A task table of `n` two-token examples; example i predicts token i."""
    return datasets.Dataset.from_list([{"input_ids": [5, i], "labels": [-100, i], "inter_position": [0, 1],
                                        "intra_position": [0, 0], "part_a_length": 1, "text": "x"} for i in range(n)])


def test_family_weights_set_the_mix_whatever_the_family_sizes():
    small, large = laid_out(10), laid_out(90)
    loader = training_loader([small, large], [1.0, 1.0], [1] * 100, 10, None, 0, 0, (1, 0), 0, lambda: 0)
    drawn = torch.tensor(flat(loader.sampler.steps()))
    assert len(drawn) == 100
    assert 0.35 < (drawn < 10).float().mean() < 0.65  # half of the draws from the 10-example family


def test_loader_state_is_the_finished_steps_and_resumes_there():
    done = {"steps": 0}
    make = partial(training_loader, [laid_out(40)], [1.0], [2] * 40, 4, None, 0, 7, (1, 0), 0, lambda: done["steps"])
    loader = make()
    batches = [b["labels"][:, 1].tolist() for b in loader]
    done["steps"] = 3
    state = loader.state_dict()
    assert state == {"epoch": 0, "steps": 3}
    restored = make()
    restored.load_state_dict(state)
    assert [b["labels"][:, 1].tolist() for b in restored] == batches[3:]


@pytest.mark.parametrize("length", [1, 7, 16, 17, 41, 64])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_shards_cover_each_request_once_in_single_process_batches(length, world):
    if length < world:
        with pytest.raises(ValueError, match="fewer than the"):
            ContiguousShard(length, 16, world, 0)
        return
    loaders = [evaluation_loader(list(range(length)), 16, (world, rank), list, 0) for rank in range(world)]
    batches = [b for loader in loaders for b in loader]
    assert all(len(list(loader)) > 0 for loader in loaders)  # every rank decodes, so metrics sync everywhere
    assert [i for b in batches for i in b] == list(range(length))  # in order: gathered states match one process
    if -(-length // 16) >= world:
        assert batches == [list(range(s, min(s + 16, length))) for s in range(0, length, 16)]


def test_a_step_reads_its_examples_from_every_table_in_step_order():
    loader = training_loader([laid_out(3), laid_out(4)], [1.0, 1.0], [2] * 7, 2, None, 0, 0, (1, 0), 0, lambda: 0)
    rows = loader.dataset[[[4, 0], [6, 4, 2]]]  # indices run over both tables: 4 is the second table's example 1
    assert [[r["labels"][1] for r in row] for row in rows] == [[1, 0], [3, 1, 2]]
    assert set(rows[0][0]) == {"input_ids", "labels", "inter_position", "intra_position", "part_a_length"}


def test_request_order_keeps_a_requests_rows_together_and_shuffles_requests_by_seed():
    ids = [0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 5, 6, 7, 8, 9]
    order = request_order(ids, seed=0)
    assert sorted(order) == list(range(len(ids)))
    requests = [ids[i] for i in order]
    runs = [r for k, r in enumerate(requests) if k == 0 or requests[k - 1] != r]
    assert sorted(runs) == list(range(10)) and runs != sorted(runs)  # each request one run, not in id order
    assert all(a < b for a, b in zip(order, order[1:]) if ids[a] == ids[b])  # rows keep their order within one
    assert request_order(ids, seed=0) == order and request_order(ids, seed=1) != order


def test_an_ordered_evaluation_stream_reads_its_order_in_single_process_batches_on_every_rank():
    order = request_order(list(range(41)), seed=0)
    for world in (1, 2, 3):
        loaders = [evaluation_loader(list(range(41)), 8, (world, rank), list, 0, order) for rank in range(world)]
        assert [b for loader in loaders for b in loader] == [order[s: s + 8] for s in range(0, 41, 8)]


def test_longest_first_sorts_whole_requests_within_each_sample_and_keeps_the_rows_each_rank_reads():
    ids = [0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 8, 9, 9]
    lengths = [3, 9, 1, 4, 4, 2, 7, 5, 5, 8, 2, 6, 1, 1]
    order = request_order(ids, seed=0)
    assert longest_first(order, [1] * len(ids), requests=ids) == order  # equal lengths: the order is kept
    sorted_rows = longest_first(order, lengths, requests=ids)
    longest = {r: max(n for i, n in zip(ids, lengths) if i == r) for r in set(ids)}
    keys = [longest[ids[i]] for i in sorted_rows]
    assert keys == sorted(keys, reverse=True) and sorted(sorted_rows) == list(range(len(ids)))
    requests = [ids[i] for i in sorted_rows]
    assert len([r for k, r in enumerate(requests) if k == 0 or requests[k - 1] != r]) == len(set(ids))
    for world, limit in ((1, 2), (2, 1), (3, 1), (2, 0.5)):
        cuts = sample_cuts(len(ids), 3, world, limit)
        sampled = longest_first(order, lengths, cuts, ids)
        for rank in range(world):
            before = [i for b in evaluation_loader(list(range(len(ids))), 3, (world, rank), list, 0, order) for i in b]
            after = [i for b in evaluation_loader(list(range(len(ids))), 3, (world, rank), list, 0, sampled) for i in b]
            read = int(limit) * 3 if isinstance(limit, int) else int(len(before) // 3 * limit) * 3
            assert sorted(after[:read]) == sorted(before[:read]), (world, limit, rank)  # the same sample, reordered
    assert sample_cuts(len(ids), 3, 2, 1.0) == [] and sample_cuts(len(ids), 3, 1, None) == []
