"""The task-family contract: what a plugin in `tasks/` supplies, and the shared machinery it inherits."""

from __future__ import annotations

import hashlib
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

import torch
from torchmetrics import Metric

from recsys_lightning.builtin import builtin_dir
from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.generation.answers import AnswerSet
from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.infilling.masking import Masking
from recsys_lightning.prompts import PromptSet, Template, load_prompts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from recsys_lightning.data.indexing import ItemIndex
    from recsys_lightning.data.schema import RecData
    from recsys_lightning.generation.generator import Generator

SPLITS = ("train", "val", "test")


class DecodingOption:
    """Base of a family's typed options that change only how rows are decoded or scored, never the rows themselves:
    the data cache key leaves options of this kind out, so changing them reuses the built examples."""

    @classmethod
    def of(cls, value: Any) -> Any:
        """The option from a config value: an instance as is, a mapping as keyword arguments, None as None."""
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"{cls.__name__} takes a mapping of its fields, got {value!r}")
        return cls(**value)


def is_decoding_option(annotation: Any) -> bool:
    """Whether a parameter annotation names a DecodingOption (alone or in a union such as `X | None`)."""
    kinds = typing.get_args(annotation) or (annotation,)
    return any(isinstance(k, type) and issubclass(k, DecodingOption) for k in kinds)


@dataclass
class Request:
    """One thing to ask the model: slot values for a template plus metadata kept beside the tokens."""

    values: dict[str, str | Sequence[str]]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class FamilyContext:
    """What a family may read after set-up: the dataset, its item index and the tokenizer, plus the catalog's
    token sequences and Trie, built once and shared by every family that ranks items."""

    data: RecData
    index: ItemIndex
    tokenizer: PreTrainedTokenizerBase
    seed: int = 0

    @cached_property
    def item_trie(self) -> ItemTrie:
        """Every item's rendering as tokens, ending with <|endofpiece|>."""
        renders = [self.index.render(i) for i in range(len(self.index))]
        sequences = self.tokenizer(renders, add_special_tokens=False)["input_ids"]
        return ItemTrie(sequences, GLMTokens.of(self.tokenizer).eop)

    def generate_text(self, generator: Generator, batch: dict[str, Any], max_new_tokens: int) -> list[str]:
        """Greedy free text filling each prompt's blank, as strings."""
        return self.tokenizer.batch_decode(generator.generate(batch, max_new_tokens), skip_special_tokens=True)

    def answers(self, texts: Sequence[str]) -> AnswerSet:
        """A closed set of short answers ("1".."5", "yes"/"no", attribute values) decoded by exact scoring."""
        return AnswerSet(texts, self.tokenizer)


def seeded_choice(options: Sequence[Template], *keys: object) -> Template:
    """Pick one template by a stable hash of `keys`, so builds are identical across runs and processes."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return options[int.from_bytes(digest, "little") % len(options)]


class TaskFamily(ABC):
    """A task family: prompt templates, how requests come from the data, how outputs are decoded and scored.

    Subclasses set `slots` (what their requests fill; every request fills all of them, so any template can be
    drawn for it), `entity_slots` (which slot values are entities) and implement `requests`, `metrics`,
    `evaluate` and `predict`. A template's target slot says what is decoded and scored: the core evaluates
    one stream per (seen/unseen, target slot) and hands the stream's target to the family as
    `batch["target_slot"]`. A family that sets `masking` trains on its whole filled templates masked at the
    entity level (`infilling/masking.py`) instead of on the target slot as the one blank; evaluation is unchanged.
    Registration stamps `name` and `source`.
    """

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""
    prompt_file: ClassVar[str] = ""
    slots: ClassVar[frozenset[str]] = frozenset()
    entity_slots: ClassVar[frozenset[str]] = frozenset()
    # Metadata columns (beside the tokens) that `collate` turns into tensors or keeps as lists.
    meta_columns: ClassVar[tuple[str, ...]] = ()
    # Whether `requests(data, "refit")` gives training requests that take in each user's validation item too (a
    # final fit after the recipe was chosen on validation; `data.refit`).
    refits: ClassVar[bool] = False
    # Training layout: None blanks each template's target slot; a `Masking` lays out the whole filled template
    # as entity-level blanks (whole entities, Poisson spans of other text, ~ratio of the tokens).
    masking: Masking | None = None

    def __init__(self, weight: float = 1.0, **options: Any) -> None:
        if options:
            raise TypeError(f"task family {self.name!r} takes no options {sorted(options)}")
        if weight <= 0:
            raise ValueError(f"task family {self.name!r}: weight must be > 0, got {weight}")
        self.weight = weight
        self.prompts = self.load_prompts()
        self.context: FamilyContext | None = None

    @classmethod
    def row_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The options that shape the built rows (the data cache key): all but those typed as a DecodingOption."""
        try:
            hints = typing.get_type_hints(cls.__init__)
        except NameError:  # an annotation only a type checker resolves: every option keys the rows, never stale
            hints = {}
        return {k: v for k, v in options.items() if not is_decoding_option(hints.get(k))}

    # --- prompts -------------------------------------------------------------------------------
    @classmethod
    def prompt_path(cls) -> Path:
        """Where the family's templates live: beside a plugin folder (`../prompts/`), else the built-in set."""
        name = cls.prompt_file or f"{cls.name}.yaml"
        if Path(name).is_absolute():
            return Path(name)
        local = Path(cls.source).parent.parent / "prompts" / name
        return local if local.is_file() else builtin_dir("prompts") / name

    @classmethod
    def load_prompts(cls, path: Path | None = None) -> PromptSet:
        """The family's templates (or those of `path`), checked against the slots the family fills."""
        prompts = load_prompts(path or cls.prompt_path())
        prompts.validate(cls.slots, cls.name)
        return prompts

    # --- data ----------------------------------------------------------------------------------
    def setup(self, context: FamilyContext) -> None:
        """Receive the dataset, item index and tokenizer; build catalog-level state (a Trie, say)."""
        self.context = context

    @abstractmethod
    def requests(self, data: RecData, split: str) -> Iterator[Request]:
        """Yield the requests of one split ('train', 'val' or 'test')."""

    def evaluates(self, template: Template) -> bool:
        """Whether `template` is used for evaluation (all are trained on when seen)."""
        return True

    def eval_rows(self, request: Request, template: Template) -> list[Request]:
        """The rows one evaluation request becomes under `template` (several when each candidate is its own
        prompt, as in yes/no ranking); they share the request's id."""
        return [request]

    # --- evaluation ----------------------------------------------------------------------------
    @abstractmethod
    def metrics(self, target: str) -> dict[str, Metric]:
        """Fresh torchmetrics for the evaluation streams of templates whose target slot is `target`."""

    @abstractmethod
    def evaluate(self, generator: Generator, batch: dict[str, Any], metrics: dict[str, Metric]) -> None:
        """Decode a batch of Part A prompts (target slot `batch["target_slot"]`) and update `metrics`."""

    @abstractmethod
    def predict(self, generator: Generator, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Decode a batch into JSON-ready answers, one per row."""

    def eval_targets(self, unseen: bool) -> list[str]:
        """Target slots of the evaluated seen (or unseen) templates, in file order."""
        templates = self.prompts.unseen if unseen else self.prompts.seen
        return list(dict.fromkeys(t.target for t in templates if self.evaluates(t)))

    def metric_names(self) -> list[str]:
        """Every metric this family reports (the names `recsys-lightning tasks` lists)."""
        targets = dict.fromkeys(self.eval_targets(False) + self.eval_targets(True))
        # a metric that reports several values (ROUGE) names them in KEYS
        return [key for target in targets for name, metric in self.metrics(target).items()
                for key in getattr(metric, "KEYS", (name,))]

    # --- collation -----------------------------------------------------------------------------
    def collate_meta(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch the family's metadata columns: ints and floats become tensors, anything else stays a list."""
        out: dict[str, Any] = {}
        for key in self.meta_columns:
            values = [row[key] for row in rows]
            if all(isinstance(v, int) for v in values):
                out[key] = torch.tensor(values, dtype=torch.long)
            elif all(isinstance(v, (int, float)) for v in values):
                out[key] = torch.tensor(values, dtype=torch.float)
            else:
                out[key] = values
        return out

    def ranked_items(self, user: int, items: Sequence[int], scores: Sequence[float]) -> dict[str, Any]:
        """A prediction line for ranking families: the user and the items best first, by raw ids."""
        data = self.ctx.data
        return {"user": data.users[user],
                "items": [{"item": data.items[i], "score": round(float(s), 4)} for i, s in zip(items, scores) if i >= 0]}

    @property
    def ctx(self) -> FamilyContext:
        if self.context is None:
            raise RuntimeError(f"task family {self.name!r} used before setup()")
        return self.context
