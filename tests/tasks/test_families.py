"""Table-driven checks of the five built-in families on a tiny slice of the demo data."""

from __future__ import annotations

import dataclasses

import pytest

from recsys_lightning.data.datamodule import RecDataModule, TaskSpec
from recsys_lightning.requests import NO, YES

FAMILIES = ["sequential", "direct", "rating", "explanation", "review"]


@pytest.fixture(scope="module")
def dm(tiny_reviews):
    module = RecDataModule(tasks=[TaskSpec(name) for name in FAMILIES], root=str(tiny_reviews), vocab_size=400,
                           max_length=640, cache_dir=None)
    module.load()
    return module


def family(dm, name):
    return dm.families[FAMILIES.index(name)]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_template_renders_every_request_of_every_split(dm, name):
    fam = family(dm, name)
    for split in ("train", "val", "test"):
        requests = list(fam.requests(dm.data, split))
        assert requests, (name, split)
        for template in fam.prompts.templates:
            rendered = template.render(requests[0].values, fam.entity_slots)
            assert rendered.text.count(template.mask) == 1 and rendered.target


def test_review_split_families_never_train_on_held_out_interactions(dm):
    for name in ("rating", "review", "explanation"):
        fam = family(dm, name)
        train = {(r.meta["user_id"], r.meta["item_id"]) for r in fam.requests(dm.data, "train")}
        test = {(r.meta["user_id"], r.meta["item_id"]) for r in fam.requests(dm.data, "test")}
        assert train and test and not train & test, name


def test_explanations_mention_their_feature_hint(dm):
    for request in family(dm, "explanation").requests(dm.data, "train"):
        assert request.values["feature"].lower() in request.values["explanation"].lower()


def test_direct_evaluation_candidates_follow_the_protocol(dm):
    fam = family(dm, "direct")
    for request in fam.requests(dm.data, "test"):
        candidates = request.meta["candidate_items"]
        assert len(candidates) == 100 and len(set(candidates)) == 100
        user_items = set(dm.data.sequence(request.meta["user_id"]).tolist())
        assert [c for c in candidates if c in user_items] == [request.meta["target_item"]]
    yes_no = next(t for t in fam.prompts.seen if t.target == "answer")
    rows = fam.eval_rows(request, yes_no)
    assert len(rows) == 100 and sum(r.values["answer"] == YES for r in rows) == 1
    assert {r.values["answer"] for r in rows} == {YES, NO}


def test_training_candidates_are_drawn_from_the_prefix_alone(dm, tiny_reviews):
    """Negatives avoid the items up to the target and nothing else: replacing every user's held-out items
    (the last two) leaves every training request's candidates and probe unchanged."""
    fam = family(dm, "sequential")
    requests = list(fam.requests(dm.data, "train"))
    for request in requests:
        prefix = dm.data.sequence(request.meta["user_id"]).tolist()[: len(request.meta["seen_items"]) + 1]
        negatives = [c for c in request.meta["candidate_items"] if c != request.meta["target_item"]]
        assert len(negatives) == fam.num_candidates - 1 and not set(negatives) & set(prefix)
        assert request.values["answer"] == (YES if request.meta["probe_item"] == request.meta["target_item"] else NO)
    data = dm.data
    changed = dataclasses.replace(data, item=data.item.copy())
    for user in range(data.num_users):
        end = data.offsets[user + 1]
        changed.item[end - 2:end] = (changed.item[end - 2:end] + 1) % data.num_items
    again = list(fam.requests(changed, "train"))
    assert [r.meta["candidate_items"] for r in again] == [r.meta["candidate_items"] for r in requests]
    assert [r.values for r in again] == [r.values for r in requests]


def test_evaluated_templates_and_streams(dm):
    dm.setup("test")
    streams = {(s.family.name, s.unseen, s.target) for s in dm.eval_streams}
    assert ("sequential", False, "item") in streams and ("sequential", False, "answer") not in streams
    assert {("direct", False, "item"), ("direct", False, "answer"), ("review", False, "summary"),
            ("review", False, "rating"), ("review", True, "summary"), ("rating", True, "rating")} <= streams
