"""Textualization: templates with optional groups, entity spans in characters and, through the tokenizer, in tokens."""

from __future__ import annotations

import pytest

from recsys_lightning.pipeline.encode import encode_described, entity_token_spans
from recsys_lightning.data.indexing import build_index
from recsys_lightning.data.schema import RecData
from recsys_lightning.data.textualize import (TemplateError, compile_template, describe_item, describe_user,
                                              indefinite_article, render, with_templates)
from recsys_lightning.infilling.tokenizer import train_tokenizer


def toy() -> RecData:
    return RecData.build(
        "toy", ["u1", "u1", "u1", "u2", "u2", "u2"], ["a", "b", "c", "a", "c", "b"], [1, 2, 3, 1, 2, 3],
        item_features={"title": {"a": "Red Guitar", "b": "Blue Tuner"}, "tags": {"a": ["loud", "cheap"], "c": []}},
        user_features={"age": {"u1": "18", "u2": "24"}, "job": {"u1": "engineer"}},
        templates={"user": "{user} is {age:an}-year-old[ {job}].", "item": "item {item}[ is {title}][ ({tags})]"},
    )


def spans_text(described):
    return [(described.text[s:e], kind) for s, e, kind in described.entities]


def test_optional_groups_articles_lists_and_spans():
    data = toy()
    index = build_index("sequential", data, 0)
    first = describe_user(data, 0)
    assert first.text == "user_1 is an 18-year-old engineer."
    assert spans_text(first) == [("user_1", "user"), ("18", "age"), ("engineer", "job")]
    assert describe_user(data, 1).text == "user_2 is a 24-year-old."
    a = describe_item(data, index, 0)
    assert a.text == f"item {index.render(0)} is Red Guitar (loud, cheap)"
    assert spans_text(a) == [(index.render(0), "item"), ("Red Guitar", "title"), ("loud", "tags"), ("cheap", "tags")]
    assert describe_item(data, index, 2).text == f"item {index.render(2)}"  # no title, empty tag list


def test_config_override_is_checked_against_the_features():
    data = with_templates(toy(), {"item": "{title}[ by {item}]"})
    assert describe_item(data, build_index("sequential", data, 0), 1).text.startswith("Blue Tuner by ")
    with pytest.raises(TemplateError, match=r"data.textualize.user: field 'colour' is not a user feature of toy; "
                                            r"available: \['age', 'job', 'user'\]"):
        with_templates(toy(), {"user": "{user}[ likes {colour}]"})
    with pytest.raises(TemplateError, match=r"data.textualize: unknown keys \['shop'\]"):
        with_templates(toy(), {"shop": "{user}"})
    with pytest.raises(TemplateError, match=r"data.textualize.item: unbalanced or nested \[ \]"):
        with_templates(toy(), {"item": "[{item} [{title}]]"})
    with pytest.raises(TemplateError, match=r"bad slot \{title:>10\}"):
        with_templates(toy(), {"item": "{item} {title:>10}"})


def test_a_required_field_without_value_names_the_record():
    data = with_templates(toy(), {"item": "{item} is {title}"})
    with pytest.raises(TemplateError, match=r"item 'c': required field 'title' has no value"):
        describe_item(data, build_index("sequential", data, 0), 2)


@pytest.mark.parametrize("word,article", [("8", "an"), ("11", "an"), ("18", "an"), ("80", "an"), ("81", "an"),
                                          ("1", "a"), ("24", "a"), ("110", "a"), ("engineer", "an"),
                                          ("user", "a"), ("male", "a")])
def test_indefinite_article(word, article):
    assert indefinite_article(word) == article


def test_entity_spans_survive_tokenization():
    tokenizer = train_tokenizer(["user_1 is an 18-year-old engineer item 12 is Red Guitar (loud, cheap)"] * 10, 120)
    groups = compile_template("{user}: {title}, {tags}; {n}", "test")
    described = render(groups, {"user": "user_12", "title": "Red Guitar", "tags": ["loud", "cheap"], "n": "128"},
                       "test")
    ids, spans = encode_described(tokenizer, described.text, described.entities)
    assert len(spans) == len(described.entities)
    for (start, end), (text, _) in zip(spans, spans_text(described)):
        decoded = tokenizer.decode(ids[start:end]).replace(" ", "")
        assert text.replace(" ", "") in decoded  # every token of the entity is inside its range
        assert tokenizer.decode(ids[start + 1:end]).replace(" ", "") != text.replace(" ", "")  # and none to spare
    assert entity_token_spans([(0, 4), (4, 5), (5, 9)], [(4, 9, "x"), (20, 22, "gone")]) == [(1, 3)]


def test_built_examples_carry_entity_token_ranges_in_part_a(tiny_reviews):
    from recsys_lightning.pipeline.datamodule import RecDataModule

    dm = RecDataModule(root=str(tiny_reviews), cache_dir=None, vocab_size=300, max_length=64)
    dm.setup("fit")
    cut = 0
    for dataset in (dm._train[0], dm._eval["val"][0]):
        for row in dataset.select(range(0, len(dataset), 7)):
            chars = [row["text"][s:e] for s, e in row["entity_spans"]]
            tokens = [dm.tokenizer.decode(row["input_ids"][s:e]).replace(" ", "") for s, e in row["entity_tokens"]]
            cut += len(chars) > len(tokens)
            for text, decoded in zip(chars[len(chars) - len(tokens):], tokens):  # a long prompt loses its oldest
                assert decoded.replace("▁", "") == text.replace(" ", "")
            assert all(1 <= s < e <= row["input_ids"].index(dm.tokens.eos) for s, e in row["entity_tokens"])
    assert cut > 0  # max_length 64 truncates some prompts, and their leading entities are dropped, not shifted
