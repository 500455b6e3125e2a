"""MultiTaskDataModule: dataset -> requests of every selected task family -> rendered prompts -> token layouts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from recsys_lightning.data.adapters import load_dataset, reader_file
from recsys_lightning.pipeline.cache import (PACKAGE, ExampleCache, code_hash, data_fingerprint, files_hash,
                                             tokenizer_hash)
from recsys_lightning.pipeline.encode import encode_masked_rows, encode_rows
from recsys_lightning.data.embeddings import model_fingerprint
from recsys_lightning.data.indexing import ItemIndex, SemanticIds, build_index
from recsys_lightning.pipeline.sampling import (evaluation_loader, example_lengths, longest_first, prompt_lengths,
                                                request_order, sample_cuts, training_loader)
from recsys_lightning.data.schema import RecData
from recsys_lightning.data.splits import SPLIT_IDS, TRAINING_SPLITS, review_split
from recsys_lightning.data.textualize import describe_item, describe_user, with_templates
from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.infilling.tokenizer import load_tokenizer, train_tokenizer
from recsys_lightning.family import FamilyContext, Request, TaskFamily, seeded_choice
from recsys_lightning.infilling.layout import collate_part_a
from recsys_lightning.infilling.masking import Masking
from recsys_lightning.builtin import builtin_dir
from recsys_lightning.registry import discover, get_task

DEMO_ROOT = Path(__file__).resolve().parent.parent / "data" / "demo"


@dataclass
class TaskSpec:
    """One task family in the training mix.

    Args:
        name: the registered family name (see `recsys-lightning tasks`).
        weight: relative sampling weight of the family's training examples.
        options: keyword options of the family's constructor.
        max_eval_requests: evaluate at most this many validation/test requests (a seeded subset); None = all.
        prompts: a prompt file replacing the family's own templates (same format and slots): a path, or a path
            inside the shipped `prompts/` folder such as `variants/sequential_id_only.yaml`.
    """

    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    max_eval_requests: int | None = None
    prompts: str | None = None


@dataclass(frozen=True)
class EvalStream:
    """One evaluation dataloader: a family's requests under its seen or unseen templates of one target slot."""

    family: TaskFamily
    unseen: bool
    target: str
    max_requests: int | None = None
    validate: bool = True

    @property
    def prefix(self) -> str:
        return f"{self.family.name}/unseen/" if self.unseen else f"{self.family.name}/"

    @property
    def name(self) -> str:
        return f"{'unseen' if self.unseen else 'seen'}-{self.target}"

    @property
    def templates(self) -> tuple[Any, ...]:
        pool = self.family.prompts.unseen if self.unseen else self.family.prompts.seen
        return tuple(t for t in pool if t.target == self.target and self.family.evaluates(t))


class RecDataModule(L.LightningDataModule):
    """Builds every selected family's examples from one dataset and serves mixed training batches."""

    def __init__(
        self,
        tasks: list[TaskSpec] | None = None,
        family_options: dict[str, dict[str, Any]] | None = None,
        root: str | None = None,
        format: str = "amazon_reviews",
        reader_options: dict[str, Any] | None = None,
        item_index: str = "sequential",
        tokenizer: str | None = None,
        vocab_size: int = 2000,
        max_length: int = 256,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        task_dirs: list[str] | None = None,
        seed: int = 0,
        textualize: dict[str, str] | None = None,
        cache_dir: str | None = ".cache/recsys_lightning",
        num_proc: int = 1,
        pack_length: int | None = None,
        refit: bool = False,
        semantic: SemanticIds | None = None,
        validate: list[str] | None = None,
    ) -> None:
        """
        Args:
            tasks: the families to train and evaluate, with sampling weights (default: sequential).
            family_options: options per family name that every task of that family takes unless its own `options`
                set them: a dataset's defaults, so method overlays that replace `tasks` keep them (Yelp's repeat
                visits: `{sequential: {exclude_history: false}}`).
            root: dataset folder; None uses the bundled Musical Instruments demo data.
            format: the reader of `root`, by its registered name (entry-point group `recsys_lightning.readers`):
                amazon_reviews, s3rec, movielens, restaurant, recbole (RecBole atomic files), table (CSV/Parquet
                with a column mapping), or a plugin's.
            reader_options: keyword options of the reader (table: `{interactions: file, columns: {user: ..., item:
                ...}, items: {...}, users: {...}}`; recbole: `{name: ..., user_field: ...}`); see docs/datasets.md.
            item_index: how items are written as text (sequential, random, title, atomic, p5, semantic).
            tokenizer: a tokenizer folder or hub name; None uses a pretrained backbone's own tokenizer, or trains a
                BPE tokenizer on the dataset's text.
            vocab_size: vocabulary size of a locally trained tokenizer.
            max_length: longest Part A + Part B in tokens; longer prompts lose their oldest tokens.
            batch_size: training batch size.
            eval_batch_size: prompts decoded together in validation, test and predict.
            num_workers: dataloader worker processes.
            task_dirs: extra folders whose `.py` files register task families.
            seed: seed of template choice, item ids and sampling.
            textualize: description templates overriding the dataset's ({user: "...", item: "..."}).
            cache_dir: folder of the built-example cache (Arrow); None builds in memory every run.
            num_proc: processes that tokenize examples.
            pack_length: pack several training examples into rows of this many tokens (at least max_length);
                batch_size then counts rows. None: one example per row, padded to the longest in the batch.
            refit: fit on each user's validation item too (the 'refit' split), for a final model once the recipe and
                its steps were chosen on validation; there is then nothing held out to validate on, so fitting has
                no validation (the test item stays unseen). Every family must support it (`TaskFamily.refits`).
            semantic: settings of `item_index: semantic` (levels, codes per level, k-means seed, encoder batch size,
                encoder); None: the defaults, `{levels: 3, codes: 256, seed: 0}`.
            validate: the families `fit` validates (None: every one); the others still train and test, without the
                validation time of families no checkpoint choice watches (direct decodes 100 candidates a request).
        """
        super().__init__()
        specs = tasks if tasks is not None else [TaskSpec("sequential")]
        if not specs:
            raise ValueError("data.tasks: select at least one task family")
        known = discover(task_dirs or [])
        defaults = family_options or {}
        if set(defaults) - set(known):
            raise ValueError(f"data.family_options: unknown task families {sorted(set(defaults) - set(known))}; "
                             f"registered: {sorted(known)}")
        specs = [replace(spec, options={**defaults.get(spec.name, {}), **spec.options}) for spec in specs]
        if pack_length is not None and pack_length < max_length:
            raise ValueError(f"data.pack_length ({pack_length}) must be at least data.max_length ({max_length})")
        self.save_hyperparameters(ignore=["tasks", "semantic"])
        self.hparams["tasks"] = [asdict(spec) for spec in specs]  # plain data, so checkpoints load weights-only
        self.hparams["semantic"] = asdict(semantic) if semantic is not None else None
        self.semantic = semantic or SemanticIds()
        self.semantic.check()
        self.families: list[TaskFamily] = [self._family(i, spec) for i, spec in enumerate(specs)]
        names = [f.name for f in self.families]
        if len(set(names)) != len(names):
            raise ValueError(f"data.tasks: a family is listed twice: {names}")
        if validate is not None and (not validate or set(validate) - set(names)):
            raise ValueError(f"data.validate: {validate} must name some of the families in data.tasks: {names}")
        if refit and not all(f.refits for f in self.families):
            raise ValueError(f"data.refit: families {[f.name for f in self.families if not f.refits]} cannot train on "
                             f"the validation items (only families that set `refits` can)")
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.data: RecData | None = None
        self.index: ItemIndex | None = None
        self.eval_streams: list[EvalStream] = []
        self.cache: ExampleCache | None = None
        self._tokenizer_id = ""
        self._train: list[Dataset] = []
        self._eval: dict[str, list[Dataset]] = {}

    @staticmethod
    def _family(i: int, spec: TaskSpec) -> TaskFamily:
        cls = get_task(spec.name)
        try:
            family = cls(weight=spec.weight, **spec.options)
        except TypeError as err:
            raise ValueError(f"data.tasks[{i}] ({spec.name}): bad options {spec.options}: {err}") from None
        if spec.prompts:
            path = Path(spec.prompts)
            family.prompts = family.load_prompts(path if path.exists() else builtin_dir("prompts") / path)
        return family

    # --- set-up --------------------------------------------------------------------------------
    def use_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Use this tokenizer (e.g. the one saved in a checkpoint) instead of loading or training one."""
        self.tokenizer = tokenizer

    def load(self) -> None:
        """Read the dataset, index its items, get the tokenizer and hand all three to the families (once)."""
        if self.data is not None:
            return
        hp = self.hparams
        root = Path(hp.root) if hp.root else DEMO_ROOT
        self.data = with_templates(load_dataset(hp.format, root, hp.seed, hp.reader_options), hp.textualize)
        if hp.cache_dir:
            self.cache = ExampleCache.open(hp.cache_dir, self.data.name, self._cache_key(root))
        memo = self.cache.json_value if self.cache is not None else None  # semantic codes: built once per key
        self.index = build_index(hp.item_index, self.data, hp.seed, self.semantic, memo)
        if self.tokenizer is None and not hp.tokenizer:
            self.tokenizer = self._backbone_tokenizer()
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(hp.tokenizer) if hp.tokenizer else self._local_tokenizer()
        self.tokenizer.add_tokens(list(self.index.new_tokens))
        self._tokenizer_id = tokenizer_hash(self.tokenizer)[:16]
        context = FamilyContext(self.data, self.index, self.tokenizer, hp.seed)
        for family in self.families:
            family.setup(context)

    def _cache_key(self, root: Path) -> dict[str, Any]:
        """Everything that changes the built rows: data files, config, family code and prompts, our code."""
        hp = self.hparams
        families = [{"name": f.name, "source": files_hash([Path(f.source)]),
                     "options": f.row_options(spec["options"]),
                     "prompts": files_hash([f.prompts.path])} for f, spec in zip(self.families, hp.tasks)]
        reader = reader_file(hp.format)  # a plugin reader's code is outside code_hash's package sources
        return {"root": str(root.resolve()), "files": data_fingerprint(root), "format": hp.format,
                "reader_options": hp.reader_options or {},
                "reader_source": None if reader.is_relative_to(PACKAGE) else files_hash([reader]),
                "item_index": hp.item_index, "seed": hp.seed, "textualize": self.data.templates,
                "tokenizer": hp.tokenizer or {"local_vocab_size": hp.vocab_size}, "max_length": hp.max_length,
                "families": families, "code": code_hash(), **self._semantic_key()}

    def _semantic_key(self) -> dict[str, Any]:
        """Semantic ids' settings and the encoder's file hash (a changed encoder rebuilds the codes); else nothing."""
        if self.hparams.item_index != "semantic":
            return {}
        return {"semantic": {**asdict(self.semantic), "encoder_files": model_fingerprint(self.semantic.encoder)}}

    def _local_tokenizer(self) -> PreTrainedTokenizerBase:
        """A BPE tokenizer trained on the dataset (with any atomic item tokens), from the cache when there."""
        def train() -> PreTrainedTokenizerBase:
            assert self.index is not None
            tokenizer = train_tokenizer(self._corpus(), self.hparams.vocab_size)
            tokenizer.add_tokens(list(self.index.new_tokens))
            return tokenizer
        return self.cache.tokenizer(train) if self.cache is not None else train()

    def _backbone_tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The tokenizer a pretrained backbone brings with it (None for random-init backbones or no trainer)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        backbone = getattr(module, "backbone", None)
        return backbone.tokenizer() if backbone is not None else None

    def _corpus(self) -> Iterator[str]:
        """Text a local tokenizer learns from: the training split's reviews and summaries (no word of a held-out
        review enters the vocabulary), item renderings and descriptions, templates."""
        assert self.data is not None and self.index is not None
        training = np.flatnonzero(review_split(self.data, self.hparams.seed) == SPLIT_IDS["train"]).tolist()
        yield from (t for t in (self.data.review[row] for row in training) if t)
        yield from (t for t in (self.data.summary[row] for row in training) if t)
        if not self.index.new_tokens:
            yield " ".join(self.index.strings)
        yield from (describe_item(self.data, self.index, i).text for i in range(self.data.num_items))
        yield from (describe_user(self.data, u).text for u in range(self.data.num_users))
        for family in self.families:
            yield from (t.text for t in family.prompts.templates)

    def setup(self, stage: str) -> None:
        self.load()
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}[stage]
        if self.hparams.refit and stage == "fit":
            splits = ("refit",)  # the validation items are trained on: nothing is left to validate on
        if splits[0] in TRAINING_SPLITS and not self._train:
            self._train = [self._examples(f, splits[0]) for f in self.families]
        validate = self.hparams.get("validate")
        self.eval_streams = [EvalStream(f, unseen, target, spec["max_eval_requests"],
                                        validate is None or f.name in validate)
                             for f, spec in zip(self.families, self.hparams.tasks)
                             for unseen in (False, True) for target in f.eval_targets(unseen)]
        if stage in ("fit", "validate") and self.trainer is not None:
            self._check_monitors(self.trainer.callbacks)
        for split in splits:
            if split not in TRAINING_SPLITS and split not in self._eval:
                self._eval[split] = [self._examples(s.family, split, s) for s in self.eval_streams]

    def _check_monitors(self, callbacks: list[Any]) -> None:
        """A checkpoint or early-stopping monitor must watch a family that validates: Lightning would only
        fail (or never stop) after the first validation."""
        skipped = {s.family.name for s in self.eval_streams if not s.validate}
        for callback in callbacks:
            monitor = getattr(callback, "monitor", None)
            family = monitor.split("/")[1] if isinstance(monitor, str) and monitor.count("/") >= 2 else None
            if family in skipped:
                raise ValueError(f"{type(callback).__name__} monitors {monitor!r}, but data.validate leaves "
                                 f"family {family!r} out; monitor a validated family, or validate this one")

    def prepare_data(self) -> None:
        """Build the example cache once per node (Lightning calls this on local rank 0 before every `setup`)."""
        if self.hparams.cache_dir and self.trainer is not None:
            self.setup(str(self.trainer.state.fn.value))

    def _examples(self, family: TaskFamily, split: str, stream: EvalStream | None = None) -> Dataset:
        """Training examples, or one evaluation stream's, encoded; from the cache when it holds them."""
        def build() -> Dataset:
            return self._encode(self._rows(family, split, stream), train=stream is None, masking=family.masking)
        if self.cache is None:
            return build()
        limit = f"-max{stream.max_requests}" if stream is not None and stream.max_requests else ""
        name = f"examples-{self._tokenizer_id}/{family.name}/{split}{'-' + stream.name if stream else ''}{limit}"
        return self.cache.dataset(name, build)

    def _rows(self, family: TaskFamily, split: str, stream: EvalStream | None) -> list[dict[str, Any]]:
        """Render each request with one template drawn by a stable hash of the request: any seen template for
        training, one of the stream's templates for evaluation (where a request may become several rows)."""
        assert self.data is not None
        seed = self.hparams.seed
        requests = list(family.requests(self.data, split))
        if not requests:
            raise ValueError(f"task family {family.name!r} has no {split} requests in dataset {self.data.name!r}")
        if stream is None:
            return [self._render(family, r, seeded_choice(family.prompts.seen, seed, split, i), i,
                                 blank=family.masking is None) for i, r in enumerate(requests)]
        keep = range(len(requests))
        if stream.max_requests is not None and stream.max_requests < len(requests):
            keep = sorted(np.random.default_rng(seed).permutation(len(requests))[: stream.max_requests].tolist())
        rows = []
        for i in keep:
            template = seeded_choice(stream.templates, seed, split, i)
            rows += [self._render(family, row, template, i) for row in family.eval_rows(requests[i], template)]
        return rows

    @staticmethod
    def _render(family: TaskFamily, request: Request, template: Any, i: int, blank: bool = True) -> dict[str, Any]:
        rendered = template.render(request.values, family.entity_slots, blank)
        return {"text": rendered.text, "target": rendered.target, "opening": rendered.opening,
                "template": rendered.template_id,
                "entity_spans": [list(e[:2]) for e in rendered.entities], "request_id": i, **request.meta}

    def _encode(self, rows: list[dict[str, Any]], train: bool, masking: Masking | None = None) -> Dataset:
        """Token layouts of rendered rows: the target slot as the blank, or entity-masked texts for training rows
        of a family with `masking`."""
        assert self.tokenizer is not None
        common = {"tokenizer": self.tokenizer, "tokens": self.tokens, "max_length": self.hparams.max_length}
        if train and masking is not None:
            fn = partial(encode_masked_rows, **common, masking=masking, seed=self.hparams.seed)
        else:
            fn = partial(encode_rows, **common, train=train)
        num_proc = self.hparams.num_proc if self.hparams.num_proc > 1 and len(rows) >= 1000 else None
        return Dataset.from_list(rows).map(fn, batched=True, num_proc=num_proc)

    @property
    def tokens(self) -> GLMTokens:
        assert self.tokenizer is not None, "call setup() first"
        return GLMTokens.of(self.tokenizer)

    # --- loaders -------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        """Families drawn in proportion to their weights (with replacement), one epoch = all examples once;
        steps dealt to the data-parallel ranks and resumable mid-epoch (pipeline/sampling.py)."""
        hp = self.hparams
        return training_loader(self._train, [f.weight for f in self.families], example_lengths(self._train),
                               hp.batch_size, hp.pack_length, self.tokens.pad, hp.seed, self._shard(),
                               hp.num_workers, self._steps_done)

    def _shard(self) -> tuple[int, int]:
        """(data-parallel size, this rank) under the trainer's strategy; (1, 0) without one."""
        kwargs = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        return (kwargs["num_replicas"], kwargs["rank"]) if kwargs else (1, 0)

    def _steps_done(self) -> int:
        """Training steps finished in the current epoch: the position a resumed run starts from."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer is not None else 0

    def streams(self, stage: str) -> list[EvalStream]:
        """The evaluation streams of a stage, one per loader in order: validation leaves out the families
        `data.validate` does not name."""
        return [s for s in self.eval_streams if stage != "val" or s.validate]

    def _eval_loaders(self, split: str, stage: str) -> list[DataLoader]:
        """One loader per stream of `stage`; each rank decodes a contiguous share of whole batches (no sample
        twice)."""
        wanted = self.streams(stage)
        return [evaluation_loader(ds, self.hparams.eval_batch_size, self._shard(),
                                  partial(self._collate_eval, stream, split), self.hparams.num_workers,
                                  self._eval_order(ds, stage))
                for stream, ds in zip(self.eval_streams, self._eval[split]) if stream in wanted]

    def _eval_order(self, ds: Dataset, stage: str) -> list[int] | None:
        """Validation reads its requests in a seeded order, so that a `limit_val_batches` subset is a random
        sample of them; validation and test read each sample longest rows first (a batch pads little; the rows
        read stay the same); predict keeps the dataset's order (predictions are written in it)."""
        if stage == "predict":
            return None
        ids = ds.with_format("numpy")["request_id"][:]
        order = request_order(ids, self.hparams.seed) if stage == "val" else range(len(ds))
        limit = getattr(self.trainer, f"limit_{stage}_batches", None) if self.trainer is not None else None
        cuts = sample_cuts(len(ds), self.hparams.eval_batch_size, self._shard()[0], limit)
        return longest_first(order, prompt_lengths(ds), cuts, ids)

    def _collate_eval(self, stream: EvalStream, split: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Part A prompts of one stream, with the stream's target slot and the split its requests come from."""
        batch = collate_part_a(rows, self.tokens.pad)
        batch["request_id"] = torch.tensor([r["request_id"] for r in rows])
        batch["target_slot"] = stream.target
        batch["split"] = split
        batch.update(stream.family.collate_meta(rows))
        return batch

    def val_dataloader(self) -> list[DataLoader]:
        return [] if self.hparams.refit else self._eval_loaders("val", "val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test", "test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test", "predict")

    def stats(self) -> dict[str, Any]:
        """Dataset statistics, example counts per family and split and (once fitted) mean tokens a training row, for
        results files."""
        assert self.data is not None
        counts: dict[str, dict[str, int]] = {f.name: {} for f in self.families}
        for f, ds in zip(self.families, self._train):
            counts[f.name]["train"] = len(ds)
        for split, datasets in self._eval.items():
            for stream, ds in zip(self.eval_streams, datasets):
                counts[stream.family.name][f"{split}-{stream.name}"] = len(ds)
        stats = {**self.data.stats(), "item_index": self.hparams.item_index, "examples": counts}
        if self.index is not None and self.index.info:
            stats[f"{self.index.kind}_ids"] = self.index.info  # how semantic codes came out (levels, collisions)
        if self._train:  # how long each family's training rows are: text rows cost steps (docs/results.md)
            stats["train_tokens_mean"] = {f.name: round(float(np.mean(example_lengths([ds]))), 1)
                                          for f, ds in zip(self.families, self._train)}
        return stats
