"""Table-driven checks of the five built-in families on a tiny slice of the demo data."""

from __future__ import annotations

import dataclasses

import pytest

from recsys_lightning.pipeline.datamodule import RecDataModule, TaskSpec
from recsys_lightning.builtin import builtin_dir
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


def test_a_task_spec_can_replace_a_familys_templates(tiny_reviews, tmp_path):
    from recsys_lightning.prompts import PromptError

    variant = builtin_dir("prompts") / "variants" / "sequential_id_only.yaml"
    module = RecDataModule(tasks=[TaskSpec("sequential", prompts=str(variant))], root=str(tiny_reviews), cache_dir=None)
    assert [t.id for t in module.families[0].prompts.templates] == ["id-only"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates:\n  - {id: x, text: '{user} likes {colour}: {item}', target: item}\n")
    with pytest.raises(PromptError, match=r"template 'x' names slot \{colour\}"):
        RecDataModule(tasks=[TaskSpec("sequential", prompts=str(bad))], root=str(tiny_reviews), cache_dir=None)


def test_unconstrained_ratings_are_parsed_in_range_or_counted_as_misses(dm):
    import torch

    from recsys_lightning.generation.generator import Generator
    from recsys_lightning.metrics import rating_metrics, update_rating
    from recsys_lightning.ratings import RatingDecoder
    from tests.conftest import make_glm

    dm.setup("test")
    stream = next(i for i, s in enumerate(dm.eval_streams) if s.family.name == "rating")
    batch = next(iter(dm.test_dataloader()[stream]))
    generator = Generator(make_glm(len(dm.tokenizer)), dm.tokens, beam_size=2)
    decoded = RatingDecoder(family(dm, "rating").ctx, constrained=False).decode(generator, batch)
    assert len(decoded) == len(batch["input_ids"]) and all(d is None or 1.0 <= d <= 5.0 for d in decoded)
    metrics = rating_metrics()
    update_rating(metrics, decoded, batch["rating_value"])
    expected = sum(d is None for d in decoded) / len(decoded)
    assert abs(float(metrics["unparsed_rate"].compute()) - expected) < 1e-6
    constrained = RatingDecoder(family(dm, "rating").ctx, constrained=True).decode(generator, batch)
    assert all(isinstance(d, float) for d in constrained)
    assert torch.is_tensor(batch["rating_value"])


@pytest.mark.parametrize("variant", sorted((builtin_dir("prompts") / "variants").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_prompt_variant_renders_for_the_family_it_is_named_after(variant, tiny_reviews):
    name = variant.stem.split("_")[0]
    module = RecDataModule(tasks=[TaskSpec(name, prompts=str(variant))], root=str(tiny_reviews), cache_dir=None)
    module.load()
    fam = module.families[0]
    for split in ("train", "test"):
        request = next(iter(fam.requests(module.data, split)))
        for template in fam.prompts.templates:
            rendered = template.render(request.values, fam.entity_slots)
            assert rendered.text.count(template.mask) == 1 and rendered.target, (template.id, split)
