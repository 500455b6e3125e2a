"""Entity-masking pretraining (RecSysLLM): GLM blank infilling over whole entities of the dataset's own text.

Texts: item and user descriptions (`data/textualize.py`) and behaviour sentences ("user_3 interacted with items
5, 9, ...") over each user's training interactions only (never the held-out last two), every attribute value,
title, user name and item id an entity. A text is used when it has an entity other than its own subject (the
item's id, the user's name): something to infer from the rest. Subjects are split by a seeded hash, `eval_share`
each for validation and test, so a held-out user's description and behaviour are both held out.

Training: the family sets `masking`, so the core lays each text out with `infilling/masking.py` (whole entities and
Poisson(mean_span) spans of other text until ~mask_ratio of its tokens, spans shuffled in Part B), seeded per
example. Evaluation: each held-out text with one entity other than its subject (seeded) as the blank; exact match
of the greedy infill with the entity's tokens, and the teacher-forced perplexity of the entity's tokens and
<|endofpiece|> (exact, `Generator.score_candidates`).

Mixing: descriptions of training users show their features, so beside a family that predicts a user feature
(`user_attribute`), leave out `user` from `sources` or that family's held-out users' answers are trained on.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torchmetrics import MeanMetric, Metric

from recsys_lightning.data.schema import RecData, seeded_hash
from recsys_lightning.data.splits import training_sequences
from recsys_lightning.data.textualize import (Described, compile_template, describe_item, describe_user, render,
                                              user_name)
from recsys_lightning.family import Request, TaskFamily
from recsys_lightning.generation.generator import Generator
from recsys_lightning.metrics import Perplexity
from recsys_lightning.infilling.layout import pad_stack
from recsys_lightning.infilling.masking import Masking
from recsys_lightning.registry import register_task

SUBJECT = {"item": "item", "user": "user", "behaviour": "user"}  # text kind -> the entity field it is about
BEHAVIOUR_FIELDS = frozenset({"user", "items"})


def cut(text: Described, start: int, end: int) -> Described:
    """The characters [start, end) of a described text, with the entities lying inside them."""
    return Described(text.text[start:end], tuple((s - start, e - start, f) for s, e, f in text.entities
                                                 if start <= s and e <= end))


@register_task("entity_masking")
class EntityMasking(TaskFamily):
    """Pretrain on item/user descriptions and behaviour text with entity-level blank infilling."""

    slots = frozenset({"before", "entity", "after"})
    entity_slots = frozenset({"entity"})
    # `target` (the entity's text) and `target_ids` (its tokens) are columns of every evaluation row
    meta_columns = ("kind", "subject", "field", "target", "target_ids")

    def __init__(self, weight: float = 1.0, sources: Sequence[str] = ("item", "user", "behaviour"),
                 mask_ratio: float = 0.15, mean_span: float = 3.0, masks_per_text: int = 1, max_items: int = 50,
                 behaviour: str = "{user} interacted with items {items}.", eval_share: float = 0.1) -> None:
        """
        Args:
            weight: sampling weight in the training mix.
            sources: which texts to train on: `item` and `user` descriptions, `behaviour` sentences.
            mask_ratio: share of each training text's tokens that is masked (in expectation).
            mean_span: mean length of the Poisson spans masked in non-entity text.
            masks_per_text: training samples per text, each masked with its own seed.
            max_items: a behaviour sentence lists the user's most recent training items, at most this many.
            behaviour: the behaviour sentence, a description template over `{user}` and `{items}`.
            eval_share: share of users and of items held out for validation, and again for test.
        """
        super().__init__(weight)
        unknown = sorted(set(sources) - set(SUBJECT))
        if not sources or unknown:
            raise ValueError(f"entity_masking: sources must be a non-empty subset of {sorted(SUBJECT)}, "
                             f"got {list(sources)}")
        if not 0 < eval_share < 0.5:
            raise ValueError(f"entity_masking: eval_share must be in (0, 0.5), got {eval_share}")
        if masks_per_text < 1 or max_items < 1:
            raise ValueError(f"entity_masking: masks_per_text ({masks_per_text}) and max_items ({max_items}) "
                             "must be at least 1")
        self.behaviour = compile_template(behaviour, "entity_masking option behaviour")
        fields = {f for group in self.behaviour for f in group.fields}
        if not fields <= BEHAVIOUR_FIELDS:
            raise ValueError(f"entity_masking: behaviour template {behaviour!r} names {sorted(fields)}; "
                             f"only {sorted(BEHAVIOUR_FIELDS)} exist")
        self.masking = Masking(mask_ratio, mean_span)
        self.sources = tuple(sources)
        self.masks_per_text = masks_per_text
        self.max_items = max_items
        self.eval_share = eval_share

    # --- data ----------------------------------------------------------------------------------
    def texts(self, data: RecData) -> Iterator[tuple[str, int, Described]]:
        """(kind, dense item or user id, text) of every source text."""
        index = self.ctx.index
        if "item" in self.sources:
            yield from (("item", i, describe_item(data, index, i)) for i in range(data.num_items))
        if "user" in self.sources:
            yield from (("user", u, describe_user(data, u)) for u in range(data.num_users))
        if "behaviour" in self.sources:
            for user, sequence in enumerate(training_sequences(data)):
                if len(sequence):
                    items = [index.render(int(i)) for i in sequence[-self.max_items:]]
                    yield "behaviour", user, render(self.behaviour, {"user": user_name(user), "items": items},
                                                    f"entity_masking behaviour of user {data.users[user]!r}")

    def split_of(self, subject: str, raw_id: str) -> str:
        """Validation, test or train, by a seeded hash of the text's subject."""
        share = seeded_hash(self.ctx.seed, "entity_masking", subject, raw_id) % 10_000 / 10_000
        return "val" if share < self.eval_share else "test" if share < 2 * self.eval_share else "train"

    def requests(self, data: RecData, split: str) -> Iterator[Request]:
        seed = self.ctx.seed
        for kind, key, text in self.texts(data):
            subject = SUBJECT[kind]
            raw_id = str((data.items if subject == "item" else data.users)[key])
            eligible = [e for e in text.entities if e[2] != subject]
            if not eligible or self.split_of(subject, raw_id) != split:
                continue
            for copy in range(self.masks_per_text if split == "train" else 1):
                start, end, field = eligible[seeded_hash(seed, kind, raw_id, copy) % len(eligible)]
                yield Request({"before": cut(text, 0, start), "entity": text.text[start:end],
                               "after": cut(text, end, len(text.text))},
                              {"kind": kind, "subject": raw_id, "field": field})

    # --- evaluation ----------------------------------------------------------------------------
    def metrics(self, target: str) -> dict[str, Metric]:
        return {"exact_match": MeanMetric(), "perplexity": Perplexity()}

    def infill(self, generator: Generator, batch: dict[str, Any]) -> list[list[int]]:
        """Greedy infill of each blank, one token longer than the longest target (so a longer answer never
        matches)."""
        return generator.generate(batch, max(len(t) for t in batch["target_ids"]) + 1)

    def evaluate(self, generator: Generator, batch: dict[str, Any], metrics: dict[str, Metric]) -> None:
        targets = batch["target_ids"]
        candidates = pad_stack(targets, -1)[:, None]
        log_p = generator.score_candidates(batch, candidates)[:, 0]
        tokens = torch.tensor([len(t) + 1 for t in targets], device=log_p.device, dtype=log_p.dtype)
        metrics["perplexity"].update(-log_p / tokens, weight=tokens)
        hits = [g == list(t) for g, t in zip(self.infill(generator, batch), targets)]
        metrics["exact_match"].update(torch.tensor(hits, dtype=torch.float, device=log_p.device))

    def predict(self, generator: Generator, batch: dict[str, Any]) -> list[dict[str, Any]]:
        decoded = self.ctx.tokenizer.batch_decode(self.infill(generator, batch), skip_special_tokens=True)
        return [{"kind": k, "subject": s, "field": f, "entity": e, "reference": t}
                for k, s, f, e, t in zip(batch["kind"], batch["subject"], batch["field"], decoded, batch["target"])]
