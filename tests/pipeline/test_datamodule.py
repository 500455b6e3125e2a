"""Evaluation loaders of the data module: validation in a seeded order of whole requests, test in dataset order."""

from __future__ import annotations

import pytest

from recsys_lightning.pipeline.datamodule import RecDataModule, TaskSpec


def request_ids(loader) -> list[int]:
    return [i for batch in loader for i in batch["request_id"].tolist()]


def test_evaluation_reads_whole_requests_longest_first_and_validation_in_a_seeded_order(tiny_reviews):
    def module(seed: int) -> RecDataModule:
        dm = RecDataModule(tasks=[TaskSpec("sequential"), TaskSpec("direct")], root=str(tiny_reviews),
                           vocab_size=400, max_length=640, eval_batch_size=16, cache_dir=None, seed=seed)
        dm.setup("fit")
        dm.setup("test")
        return dm

    dm = module(0)
    loaders = zip(dm.eval_streams, dm._eval["val"], dm._eval["test"], dm.val_dataloader(), dm.test_dataloader())
    for stream, val_rows, test_rows, val, test in loaders:
        for rows, loader in ((val_rows, val), (test_rows, test)):
            ids = request_ids(loader)
            runs = [r for k, r in enumerate(ids) if k == 0 or ids[k - 1] != r]
            assert len(runs) == len(set(runs)), stream.name  # a request's rows (direct: 100 answers) stay together
            assert sorted(ids) == sorted(rows["request_id"]), stream.name  # every row once
            widths = [batch["input_ids"].shape[1] + batch["part_b_ids"].shape[1] for batch in loader]
            assert widths == sorted(widths, reverse=True), stream.name  # longest prompts first: little padding
    assert [request_ids(v) for v in module(0).val_dataloader()] == [request_ids(v) for v in dm.val_dataloader()]
    assert [request_ids(v) for v in module(1).val_dataloader()] != [request_ids(v) for v in dm.val_dataloader()]
    assert [request_ids(p) for p in dm.predict_dataloader()] == [sorted(request_ids(p)) for p in dm.predict_dataloader()]


def test_stats_give_each_familys_mean_training_row_length(tiny_reviews):
    def module(prompts: str) -> RecDataModule:
        dm = RecDataModule(tasks=[TaskSpec("sequential", options={"every_window": False}, prompts=prompts)],
                           root=str(tiny_reviews), item_index="atomic", vocab_size=400, max_length=640,
                           cache_dir=None)
        dm.setup("fit")
        return dm

    text, ids = module("variants/sequential_causal.yaml"), module("variants/sequential_id_only_causal.yaml")
    rows = [len(r) for r in text._train[0]["input_ids"]]
    assert text.stats()["train_tokens_mean"] == {"sequential": round(sum(rows) / len(rows), 1)}
    assert ids.stats()["train_tokens_mean"]["sequential"] < text.stats()["train_tokens_mean"]["sequential"]


def test_a_refit_needs_families_that_can_train_on_the_validation_items(tiny_reviews):
    with pytest.raises(ValueError, match=r"data.refit: families \['rating'\] cannot train on the validation items"):
        RecDataModule(tasks=[TaskSpec("sequential"), TaskSpec("rating")], root=str(tiny_reviews), refit=True)


def test_family_options_are_defaults_that_a_task_s_own_options_override(tiny_reviews):
    def module(**options) -> RecDataModule:
        return RecDataModule(tasks=[TaskSpec("sequential", options=options), TaskSpec("direct")],
                             family_options={"sequential": {"exclude_history": False, "max_history": 7}},
                             root=str(tiny_reviews), cache_dir=None)

    sequential, direct = module().families
    assert (sequential.exclude_history, sequential.max_history) == (False, 7)
    assert module(max_history=3).families[0].max_history == 3
    assert module().hparams["tasks"][0]["options"] == {"exclude_history": False, "max_history": 7}  # in the cache key
    with pytest.raises(ValueError, match=r"data.family_options: unknown task families \['sequentail'\]"):
        RecDataModule(family_options={"sequentail": {}}, root=str(tiny_reviews), cache_dir=None)
