from pathlib import Path

import pytest

from recsys_lightning.prompts import PromptError, Template, load_prompts
from recsys_lightning.builtin import builtin_dir
from recsys_lightning.registry import discover


def test_render_marks_entities_and_masks_the_target():
    t = Template(id="t", text="{user} bought {history}; next {item}.", target="item")
    r = t.render({"user": "user_1", "history": ["12", "7"], "item": "9"}, frozenset({"user", "history", "item"}))
    assert r.text == "user_1 bought 12, 7; next [MASK]."
    assert r.target == "9"
    assert [r.text[s:e] for s, e, _ in r.entities] == ["user_1", "12", "7"]


def test_free_text_slots_are_not_entities():
    t = Template(id="t", text="{review} -> {rating}", target="rating", mask="[gMASK]")
    r = t.render({"review": "nice", "rating": "5"}, frozenset())
    assert r.text == "nice -> [gMASK]" and r.entities == ()


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(body)
    return path


def test_unknown_slot_names_template_and_slot(tmp_path):
    prompts = load_prompts(write(tmp_path, "templates:\n  - {id: a, text: '{user} {colour} {item}', target: item}\n"))
    with pytest.raises(PromptError, match=r"template 'a' names slot \{colour\}"):
        prompts.validate(frozenset({"user", "item"}), "fam")


def test_seen_unseen_split_and_schema_errors(tmp_path):
    prompts = load_prompts(write(tmp_path, "templates:\n  - {id: a, text: '{item}', target: item}\n"
                                           "  - {id: b, text: 'x {item}', target: item, unseen: true}\n"))
    assert [t.id for t in prompts.seen] == ["a"] and [t.id for t in prompts.unseen] == ["b"]
    with pytest.raises(PromptError, match="missing keys"):
        load_prompts(write(tmp_path, "templates:\n  - {id: a, text: '{item}'}\n"))
    with pytest.raises(PromptError, match="duplicate template id"):
        load_prompts(write(tmp_path, "templates:\n  - {id: a, text: '{i}', target: i}\n  - {id: a, text: '{i}', target: i}\n"))
    with pytest.raises(PromptError, match="needs at least one seen"):
        load_prompts(write(tmp_path, "templates:\n  - {id: a, text: '{i}', target: i, unseen: true}\n")).validate(
            frozenset({"i"}), "fam")


def test_described_values_keep_their_entities_and_an_unblanked_render_fills_the_target():
    from recsys_lightning.data.textualize import Described

    t = Template(id="t", text="Note: {before}{entity}{after}", target="entity")
    values = {"before": Described("item 7 is ", ((5, 6, "item"),)), "entity": "Soap",
              "after": Described(", in Bath, Body.", ((5, 9, "categories"), (11, 15, "categories")))}
    blanked = t.render(values, frozenset({"entity"}))
    assert blanked.text == "Note: item 7 is [MASK], in Bath, Body." and blanked.target == "Soap"
    assert [blanked.text[s:e] for s, e, _ in blanked.entities] == ["7", "Bath", "Body"]
    full = t.render(values, frozenset({"entity"}), blank=False)
    assert full.text == "Note: item 7 is Soap, in Bath, Body." and full.target == ""
    assert [(full.text[s:e], f) for s, e, f in full.entities] == [
        ("7", "item"), ("Soap", "entity"), ("Bath", "categories"), ("Body", "categories")]


def test_a_prefix_slot_opens_the_blank_and_sep_joins_list_values(tmp_path):
    prompts = load_prompts(write(tmp_path, "templates:\n  - {id: c, text: 'Bought {history} then {item}.', "
                                           "target: item, prefix: history, sep: ' '}\n"))
    t = prompts.templates[0]
    prompts.validate(frozenset({"history", "item"}), "fam")
    r = t.render({"history": ["12", "7"], "item": "9"}, frozenset({"history", "item"}))
    assert (r.text, r.opening, r.target) == ("Bought [MASK].", "12 7 then ", "9")
    assert r.entities == ()
    whole = t.render({"history": ["12", "7"], "item": "9"}, frozenset({"history", "item"}), blank=False)
    assert (whole.text, whole.opening) == ("Bought 12 7 then 9.", "")


def test_a_prefix_must_be_the_slot_just_before_the_target(tmp_path):
    for text in ("'{history} {user} {item}'", "'{item} {history}'"):
        body = f"templates:\n  - {{id: c, text: {text}, target: item, prefix: history}}\n"
        prompts = load_prompts(write(tmp_path, body))
        with pytest.raises(PromptError, match=r"template 'c' has prefix 'history', which must be the slot just"):
            prompts.validate(frozenset({"history", "user", "item"}), "fam")


@pytest.mark.parametrize("path", sorted((builtin_dir("prompts") / "variants").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_variant_fills_only_its_family_slots(path):
    family = discover()[path.stem.split("_")[0]]  # variants are named <family>_<variant>.yaml
    prompts = family.load_prompts(path)
    assert prompts.seen
