"""Textualization: each dataset's declared templates turn tabular user and item features into fluent text with
every attribute value, item title and item id marked as an entity span (character offsets).

Template syntax: `{field}` is a feature of the user or item (`{user}` is the user's name, `{item}` the item as
its index renders it); `{field:an}` puts "a"/"an" before the value; `[ ... ]` is an optional group, left out
when any of its fields has no value. A list value is joined by ", ", each element its own entity.
Adapters declare the templates (`RecData.templates`); a config overrides them with `data.textualize`.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, NamedTuple, Protocol

from recsys_lightning.data.schema import DataError, RecData

Entity = tuple[int, int, str]
DEFAULT_TEMPLATES = {"user": "{user}", "item": "item {item}"}
KINDS = ("user", "item")
SPECS = ("", "an")


class ItemNames(Protocol):
    """How items are written (an `ItemIndex`); a protocol, so indexers may describe items before they name them."""

    def render(self, item: int) -> str: ...


class TemplateError(DataError):
    """A description template that cannot be parsed or names a field the dataset does not have."""


class Described(NamedTuple):
    """A text and the character spans (start, end, field) of the entities in it."""

    text: str
    entities: tuple[Entity, ...]


@dataclass(frozen=True)
class Piece:
    """Literal text followed by an optional `{field:spec}` slot."""

    literal: str
    field: str | None
    spec: str


@dataclass(frozen=True)
class Group:
    """Pieces rendered together; an optional group is dropped when one of its fields has no value."""

    optional: bool
    pieces: tuple[Piece, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(p.field for p in self.pieces if p.field is not None)


def user_name(user: int) -> str:
    """How a user is written in every prompt and description: `user_<dense id + 1>`."""
    return f"user_{user + 1}"


def indefinite_article(word: str) -> str:
    """'a' or 'an' for the spoken form of `word` (numbers: an 8, an 11, an 18, an 80-89)."""
    if word[:1].isdigit():
        return "an" if word.startswith("8") or (word[:2] in ("11", "18") and len(word) % 3 == 2) else "a"
    lower = word.lower()
    vowel = lower[:1] in tuple("aeiou") and not lower.startswith(("uni", "use", "one", "eu"))
    return "an" if vowel else "a"


@lru_cache(maxsize=64)
def compile_template(text: str, where: str) -> tuple[Group, ...]:
    """Parse a template into groups; `where` names it in errors (e.g. `data.textualize.user`)."""
    groups: list[Group] = []
    optional, start = False, 0
    for i, char in enumerate(text + "\0"):
        if char not in "[]\0":
            continue
        if (char == "[" and optional) or (char == "]" and not optional):
            raise TemplateError(f"{where}: unbalanced or nested [ ] at character {i} of {text!r}")
        if char == "\0" and optional:
            raise TemplateError(f"{where}: unclosed [ in {text!r}")
        if i > start:
            groups.append(Group(optional, _pieces(text[start:i], where)))
        optional, start = char == "[", i + 1
    return tuple(groups)


def _pieces(text: str, where: str) -> tuple[Piece, ...]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise TemplateError(f"{where}: {err} in {text!r}") from None
    pieces = []
    for literal, field, spec, conversion in parsed:
        if field is not None and (not field.isidentifier() or conversion or (spec or "") not in SPECS):
            raise TemplateError(f"{where}: bad slot {{{field}{'!' + conversion if conversion else ''}"
                                f"{':' + spec if spec else ''}}}; expected {{name}} or {{name:an}}")
        pieces.append(Piece(literal, field, spec or ""))
    return tuple(pieces)


def _missing(value: Any) -> bool:
    return value is None or value == "" or value == []


def render(groups: tuple[Group, ...], values: Mapping[str, Any], where: str) -> Described:
    """Fill the groups with `values` (str, list of str, or None = no value)."""
    parts: list[str] = []
    entities: list[Entity] = []
    length = 0

    def put(text: str) -> None:
        nonlocal length
        parts.append(text)
        length += len(text)

    for group in groups:
        absent = [f for f in group.fields if _missing(values.get(f))]
        if absent:
            if group.optional:
                continue
            raise TemplateError(f"{where}: required field {absent[0]!r} has no value; put it inside [ ] to make "
                                f"it optional")
        for piece in group.pieces:
            put(piece.literal)
            if piece.field is None:
                continue
            value = values[piece.field]
            elements = [str(v) for v in value] if isinstance(value, list) else [str(value)]
            if piece.spec == "an":
                put(indefinite_article(elements[0]) + " ")
            for i, element in enumerate(elements):
                if i:
                    put(", ")
                entities.append((length, length + len(element), piece.field))
                put(element)
    return Described("".join(parts), tuple(entities))


def templates_of(data: RecData) -> dict[str, str]:
    """The dataset's declared templates, with defaults for a kind it does not declare."""
    return {**DEFAULT_TEMPLATES, **data.templates}


def with_templates(data: RecData, overrides: Mapping[str, str] | None) -> RecData:
    """`data` with `data.textualize` overrides applied. Every field of an override, and every required field of
    a declared template, must be a feature of the dataset (a declared optional group may name a feature that
    only some copies of a format have, such as Amazon meta titles)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(KINDS))
    if unknown:
        raise TemplateError(f"data.textualize: unknown keys {unknown}; expected {list(KINDS)}")
    merged = {**templates_of(data), **overrides}
    for kind in KINDS:
        where = f"data.textualize.{kind}" if kind in overrides else f"{data.name} {kind} template"
        allowed = {kind, *(data.item_features if kind == "item" else data.user_features)}
        for group in compile_template(merged[kind], where):
            unnamed = sorted(set(group.fields) - allowed)
            if unnamed and (kind in overrides or not group.optional):
                raise TemplateError(f"{where}: field {unnamed[0]!r} is not a {kind} feature of {data.name}; "
                                    f"available: {sorted(allowed)}")
    return dataclasses.replace(data, templates=merged)


def describe_item(data: RecData, index: ItemNames, item: int) -> Described:
    """The item's description; a feature equal to the item's own rendering (a title index) is left out."""
    rendered = index.render(item)
    values: dict[str, Any] = {name: column[item] for name, column in data.item_features.items()}
    values = {k: (None if v == rendered else v) for k, v in values.items()}
    values["item"] = rendered
    template = templates_of(data)["item"]
    return render(compile_template(template, f"{data.name} item template"), values, f"item {data.items[item]!r}")


def describe_user(data: RecData, user: int) -> Described:
    """The user's description from their tabular features."""
    values: dict[str, Any] = {name: column[user] for name, column in data.user_features.items()}
    values["user"] = user_name(user)
    template = templates_of(data)["user"]
    return render(compile_template(template, f"{data.name} user template"), values, f"user {data.users[user]!r}")
