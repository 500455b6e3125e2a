"""The task-family contract: what a plugin in `tasks/` supplies, and the shared machinery it inherits."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

import torch
from torchmetrics import Metric

from recsys_lightning.prompts import PromptSet, Template, load_prompts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from recsys_lightning.data.indexing import ItemIndex
    from recsys_lightning.data.schema import RecData
    from recsys_lightning.generation.generator import Generator

SPLITS = ("train", "val", "test")


@dataclass
class Request:
    """One thing to ask the model: slot values for a template plus metadata kept beside the tokens."""

    values: dict[str, str | Sequence[str]]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class FamilyContext:
    """What a family may read after set-up: the dataset, its item index and the tokenizer."""

    data: RecData
    index: ItemIndex
    tokenizer: PreTrainedTokenizerBase


def seeded_choice(options: Sequence[Template], *keys: object) -> Template:
    """Pick one template by a stable hash of `keys`, so builds are identical across runs and processes."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return options[int.from_bytes(digest, "little") % len(options)]


class TaskFamily(ABC):
    """A task family: prompt templates, how requests come from the data, how outputs are decoded and scored.

    Subclasses set `slots` (what their requests fill), `entity_slots` (which slot values are entities) and
    implement `requests`, `metrics` and `evaluate`. Registration stamps `name` and `source`.
    """

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""
    prompt_file: ClassVar[str] = ""
    slots: ClassVar[frozenset[str]] = frozenset()
    entity_slots: ClassVar[frozenset[str]] = frozenset()
    # Metadata columns (beside the tokens) that `collate` turns into tensors or keeps as lists.
    meta_columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, weight: float = 1.0, **options: Any) -> None:
        if options:
            raise TypeError(f"task family {self.name!r} takes no options {sorted(options)}")
        if weight <= 0:
            raise ValueError(f"task family {self.name!r}: weight must be > 0, got {weight}")
        self.weight = weight
        self.prompts = self.load_prompts()
        self.context: FamilyContext | None = None

    # --- prompts -------------------------------------------------------------------------------
    @classmethod
    def prompt_path(cls) -> Path:
        """Where the family's templates live: beside a plugin folder (`../prompts/`), else the built-in set."""
        from recsys_lightning.registry import builtin_dir

        name = cls.prompt_file or f"{cls.name}.yaml"
        if Path(name).is_absolute():
            return Path(name)
        local = Path(cls.source).parent.parent / "prompts" / name
        return local if local.is_file() else builtin_dir("prompts") / name

    @classmethod
    def load_prompts(cls) -> PromptSet:
        prompts = load_prompts(cls.prompt_path())
        prompts.validate(cls.slots, cls.name)
        return prompts

    # --- data ----------------------------------------------------------------------------------
    def setup(self, context: FamilyContext) -> None:
        """Receive the dataset, item index and tokenizer; build catalog-level state (a Trie, say)."""
        self.context = context

    @abstractmethod
    def requests(self, data: RecData, split: str) -> Iterator[Request]:
        """Yield the requests of one split ('train', 'val' or 'test')."""

    # --- evaluation ----------------------------------------------------------------------------
    @abstractmethod
    def metrics(self) -> dict[str, Metric]:
        """Fresh torchmetrics for one evaluation stream (the core keeps one set per split and seen/unseen)."""

    @abstractmethod
    def evaluate(self, generator: Generator, batch: dict[str, Any], metrics: dict[str, Metric]) -> None:
        """Decode a batch of Part A prompts and update `metrics`."""

    @abstractmethod
    def predict(self, generator: Generator, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Decode a batch into JSON-ready answers, one per request."""

    # --- collation -----------------------------------------------------------------------------
    def collate_meta(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch the family's metadata columns: equal-length int lists become tensors, the rest stay lists."""
        out: dict[str, Any] = {}
        for key in self.meta_columns:
            values = [row[key] for row in rows]
            if all(isinstance(v, int) for v in values):
                out[key] = torch.tensor(values, dtype=torch.long)
            else:
                out[key] = values
        return out

    @property
    def ctx(self) -> FamilyContext:
        if self.context is None:
            raise RuntimeError(f"task family {self.name!r} used before setup()")
        return self.context
