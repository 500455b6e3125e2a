"""The direct family with the history in the blank (prompts/variants/direct_id_only_causal.yaml, direct_causal.yaml)."""

from __future__ import annotations

import pytest

from recsys_lightning.pipeline.datamodule import RecDataModule, TaskSpec


def test_causal_direct_rows_open_the_blank_as_the_sequential_causal_rows_do(tiny_reviews):
    direct = TaskSpec("direct", options={"max_history": 50}, prompts="variants/direct_id_only_causal.yaml")
    sequential = TaskSpec("sequential", options={"max_history": 50, "every_window": False},
                          prompts="variants/sequential_id_only_causal.yaml")
    dm = RecDataModule(tasks=[direct, sequential], root=str(tiny_reviews), item_index="atomic", vocab_size=400,
                       max_length=128, cache_dir=None)
    dm.setup("test")
    direct_rows, sequential_rows = dm._eval["test"]
    by_user = {row["user_id"]: row for row in sequential_rows}
    assert len(direct_rows) == len(by_user)
    for row in direct_rows:  # the candidates are scored where the sequential model generates the next item
        assert row["input_ids"] == by_user[row["user_id"]]["input_ids"]
        assert row["part_b_ids"] == by_user[row["user_id"]]["part_b_ids"]
        assert row["target_item"] in row["candidate_items"] and len(row["candidate_items"]) == 100


@pytest.mark.parametrize("unseen", [False, True])
def test_causal_direct_text_templates_keep_the_candidates_in_part_a_and_open_the_blank_with_the_history(
        tiny_reviews, unseen):
    spec = TaskSpec("direct", options={"max_history": 20}, prompts="variants/direct_causal.yaml")
    dm = RecDataModule(tasks=[spec], root=str(tiny_reviews), item_index="atomic", vocab_size=400, max_length=640,
                       cache_dir=None)
    dm.setup("test")
    item_token = dm.families[0].ctx.item_trie.item_tokens[:, 0]
    stream = next(i for i, s in enumerate(dm.eval_streams) if s.unseen == unseen)
    for row in dm._eval["test"][stream]:
        history = dm.data.sequence(row["user_id"])[:-1][-20:]
        assert row["part_b_ids"] == item_token[history].tolist()
        part_a = set(row["input_ids"])
        assert set(item_token[row["candidate_items"]].tolist()) <= part_a
        assert not set(item_token[history].tolist()) & part_a
