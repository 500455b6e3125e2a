"""Prompt templates as data: `prompts/<family>.yaml` -> typed templates that render text with entity spans."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from recsys_lightning.data.textualize import Described

MASK_TOKENS = ("[MASK]", "[sMASK]", "[gMASK]")


class PromptError(ValueError):
    """A prompt file or template that cannot serve its task family."""


@dataclass(frozen=True)
class Rendered:
    """A prompt with its target slot replaced by a mask token.

    `entities` are character spans (start, end, slot) of every entity value in `text`; `opening` is the text a
    template with a `prefix` slot moved from Part A into the blank, ahead of the target.
    """

    text: str
    target: str
    entities: tuple[tuple[int, int, str], ...]
    template_id: str
    unseen: bool
    opening: str = ""


@dataclass(frozen=True)
class Template:
    """One prompt: text with `{slot}` fields, the slot the model must fill in, and its seen/unseen split.

    `sep` joins the elements of a list value. `prefix` names the slot just before the target whose value (with
    the text between the two) opens the blank instead of standing in Part A: training then predicts it token by
    token with the target, as a causal model does its whole sequence, and decoding is given it before the target
    is generated.
    """

    id: str
    text: str
    target: str
    unseen: bool = False
    mask: str = "[MASK]"
    prefix: str | None = None
    sep: str = ", "
    slots: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(name for _, name, _, _ in string.Formatter().parse(self.text) if name is not None)
        object.__setattr__(self, "slots", names)

    def render(self, values: dict[str, str | Sequence[str] | Described], entity_slots: frozenset[str],
               blank: bool = True) -> Rendered:
        """Fill the slots; the target slot becomes the mask token and its value the Part B target. With
        `blank=False` the target slot is filled like the others and the target is empty (the whole text is the
        sample, for families whose training rows are entity-masked). With a blank, a `prefix` slot and the text
        after it go to the blank's opening instead of the text.

        A list value is joined by `sep` and each element is its own entity span; a `Described` value (a text
        with its entity spans, `data/textualize.py`) keeps its entities.
        """
        parts: list[str] = []
        entities: list[tuple[int, int, str]] = []
        length = 0
        opening, opened = "", False
        for literal, name, _, _ in string.Formatter().parse(self.text):
            if opened:  # the text between the prefix slot and the target belongs to the opening
                opening, literal, opened = opening + literal, "", False
            parts.append(literal)
            length += len(literal)
            if name is None:
                continue
            if name == self.prefix and blank:
                value = values[name]
                text = value.text if isinstance(value, Described) else value
                opening, opened = (text if isinstance(text, str) else self.sep.join(text)), True
                continue
            if name == self.target and blank:
                parts.append(self.mask)
                length += len(self.mask)
                continue
            value = values[name]
            if isinstance(value, Described):
                entities += [(length + start, length + end, field) for start, end, field in value.entities]
                parts.append(value.text)
                length += len(value.text)
                continue
            pieces = [value] if isinstance(value, str) else list(value)
            for i, piece in enumerate(pieces):
                if i:
                    parts.append(self.sep)
                    length += len(self.sep)
                if name in entity_slots:
                    entities.append((length, length + len(piece), name))
                parts.append(piece)
                length += len(piece)
        target = values[self.target] if blank else ""
        if not isinstance(target, str):
            raise PromptError(f"template {self.id!r}: target slot {self.target!r} must be a single string")
        return Rendered("".join(parts), target, tuple(entities), self.id, self.unseen, opening)


@dataclass(frozen=True)
class PromptSet:
    """The templates of one task family, split into seen (trained on) and unseen (zero-shot only)."""

    path: Path
    templates: tuple[Template, ...]

    @property
    def seen(self) -> tuple[Template, ...]:
        return tuple(t for t in self.templates if not t.unseen)

    @property
    def unseen(self) -> tuple[Template, ...]:
        return tuple(t for t in self.templates if t.unseen)

    def validate(self, provided: frozenset[str], family: str) -> None:
        """Fail with the template id and slot name when a template needs a slot the family does not fill."""
        for t in self.templates:
            for slot in t.slots:
                if slot not in provided:
                    raise PromptError(
                        f"{self.path}: template {t.id!r} names slot {{{slot}}}, but task family {family!r} "
                        f"provides only {sorted(provided)}"
                    )
            if t.target not in t.slots:
                raise PromptError(f"{self.path}: template {t.id!r} has target {t.target!r}, which is not in its text")
            before = t.slots[: t.slots.index(t.target)]
            if t.prefix is not None and before[-1:] != (t.prefix,):
                raise PromptError(f"{self.path}: template {t.id!r} has prefix {t.prefix!r}, which must be the slot "
                                  f"just before its target {{{t.target}}}")
        if not self.seen:
            raise PromptError(f"{self.path}: task family {family!r} needs at least one seen template")


_TEMPLATE_KEYS = {"id", "text", "target", "unseen", "mask", "prefix", "sep"}


def load_prompts(path: Path) -> PromptSet:
    """Read a prompt file: a mapping with a `templates` list of {id, text, target, unseen?, mask?, prefix?, sep?}."""
    if not path.is_file():
        raise PromptError(f"prompt file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PromptError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("templates"), list):
        raise PromptError(f"{path}: expected a mapping with a 'templates' list")
    templates = []
    seen_ids: set[str] = set()
    for i, entry in enumerate(raw["templates"]):
        where = f"{path}: templates[{i}]"
        if not isinstance(entry, dict):
            raise PromptError(f"{where}: expected a mapping, got {type(entry).__name__}")
        unknown = set(entry) - _TEMPLATE_KEYS
        missing = {"id", "text", "target"} - set(entry)
        if unknown or missing:
            raise PromptError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        if entry["id"] in seen_ids:
            raise PromptError(f"{where}: duplicate template id {entry['id']!r}")
        if entry.get("mask", "[MASK]") not in MASK_TOKENS:
            raise PromptError(f"{where}: mask must be one of {MASK_TOKENS}, got {entry['mask']!r}")
        seen_ids.add(entry["id"])
        templates.append(Template(**{k: (str(v) if k in ("id", "text", "target", "prefix", "sep") else v)
                                     for k, v in entry.items()}))
    return PromptSet(path, tuple(templates))
