"""`Recommender`: a trained model answering questions outside the CLI's test loop.

`Recommender.from_checkpoint(ckpt)` rebuilds it from a `recsys-lightning fit` checkpoint (reading the dataset its
data settings name); `Recommender.from_pretrained(folder)` from a `recsys-lightning export` folder alone, which
`export_recommender` makes self-contained: besides the weights, tokenizer and backbone.yaml it writes the catalog
(`catalog/items.parquet`: raw item ids in index order, each item's rendering and features; `catalog/users.parquet`:
raw user ids, each user's known history and features), the family prompt files (`prompts/`), `recommender.json`
(data settings, family options, decoding settings, rating scale) and a model card `README.md`.

Both decode as the test loop does: the sequential family's prompt rendered for the user's known history (training
items and the validation item, what a test request comes after), the same Trie beam search with the history
excluded; rating and explanation through their families' templates and decoders.
"""

from __future__ import annotations

import inspect
import json
import numbers
import shutil
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData
from lightning.pytorch.cli import instantiate_class
from torch import nn
from transformers import PreTrainedTokenizerBase

from recsys_lightning.builtin import builtin_dir
from recsys_lightning.data.indexing import ItemIndex, SemanticIds
from recsys_lightning.data.schema import DataError, RecData
from recsys_lightning.data.splits import known_sequences
from recsys_lightning.data.textualize import user_name
from recsys_lightning.data.transitions import Transitions
from recsys_lightning.errors import CheckpointError, FamilyNotTrainedError, UnknownIdError, read_checkpoint
from recsys_lightning.family import FamilyContext, TaskFamily
from recsys_lightning.generation.generator import Generator
from recsys_lightning.infilling.layout import collate_part_a
from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.model.export import Restored, export, restore
from recsys_lightning.module import check_fingerprint, dataset_fingerprint
from recsys_lightning.pipeline.datamodule import RecDataModule, TaskSpec
from recsys_lightning.pipeline.encode import part_a_ids, tokenize
from recsys_lightning.prompts import Template
from recsys_lightning.ratings import RatingDecoder
from recsys_lightning.registry import discover, get_task, task_dirs

__all__ = ["Recommender", "UnknownIdError", "FamilyNotTrainedError", "export_recommender"]

SETTINGS_FILE = "recommender.json"
ITEMS_FILE = "catalog/items.parquet"
USERS_FILE = "catalog/users.parquet"
FORMAT_VERSION = 1
SCORE_CHUNK = 512  # candidate items `score` decodes side by side in one row
FEATURE = "feature."  # column prefix of a user or item feature in the catalog tables
# The slots each question fills (a template that needs another slot cannot be asked without the dataset).
NEXT_ITEM_SLOTS = frozenset({"user", "history", "item"})
RATING_SLOTS = frozenset({"user", "item", "rating"})
EXPLANATION_SLOTS = frozenset({"user", "item", "explanation"})


# --- the catalog: what serving needs of the dataset -------------------------------------------------------------
def write_table(path: Path, columns: dict[str, list[Any]]) -> None:
    """A Parquet table; a column Arrow cannot type (mixed values) is stored as JSON text, named in the metadata."""
    arrays, encoded = {}, []
    for name, values in columns.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[name] = pa.array([json.dumps(v) for v in values])
            encoded.append(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays).replace_schema_metadata({"json_columns": json.dumps(encoded)}), path)


def read_table(path: Path, required: Sequence[str]) -> dict[str, list[Any]]:
    """The columns `write_table` wrote, JSON ones decoded; a missing file or column is named."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the folder is not a complete `recsys-lightning export`")
    table = pq.read_table(path)
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: columns {missing} are missing (has {table.column_names})")
    encoded = json.loads((table.schema.metadata or {}).get(b"json_columns", b"[]"))
    columns = table.to_pydict()
    return {k: [json.loads(v) for v in vs] if k in encoded else vs for k, vs in columns.items()}


@dataclass
class Catalog:
    """Raw user and item ids in dense-id order, every item's rendering (the item index, semantic codes included),
    each user's known history (dense item ids: training items and the validation item), features, the dataset's
    description templates and its rating scale."""

    name: str
    users: list[str]
    items: list[str]
    renders: list[str]
    histories: list[list[int]]
    item_features: dict[str, list[Any]]
    user_features: dict[str, list[Any]]
    templates: dict[str, str]
    rating_scale: list[float]

    @classmethod
    def of(cls, data: RecData, index: ItemIndex) -> Catalog:
        """The catalog of a loaded dataset and its item index."""
        ratings = data.rating[~np.isnan(data.rating)]
        return cls(data.name, list(data.users), list(data.items), [index.render(i) for i in range(len(index))],
                   [s.tolist() for s in known_sequences(data, "test")], dict(data.item_features),
                   dict(data.user_features), dict(data.templates), sorted({float(r) for r in ratings}))

    def save(self, folder: Path) -> dict[str, Any]:
        """Write the two tables; return what goes into recommender.json."""
        write_table(folder / ITEMS_FILE, {"item_id": self.items, "rendering": self.renders,
                                          **{FEATURE + k: v for k, v in self.item_features.items()}})
        write_table(folder / USERS_FILE, {"user_id": self.users, "history": self.histories,
                                          **{FEATURE + k: v for k, v in self.user_features.items()}})
        return {"dataset": self.name, "templates": self.templates, "rating_scale": self.rating_scale}

    @classmethod
    def load(cls, folder: Path, settings: dict[str, Any]) -> Catalog:
        """The catalog an export folder holds."""
        items = read_table(folder / ITEMS_FILE, ("item_id", "rendering"))
        users = read_table(folder / USERS_FILE, ("user_id", "history"))
        features = lambda table: {k[len(FEATURE):]: v for k, v in table.items() if k.startswith(FEATURE)}  # noqa: E731
        return cls(settings["dataset"], [str(u) for u in users["user_id"]], [str(i) for i in items["item_id"]],
                   items["rendering"], [list(h) for h in users["history"]], features(items), features(users),
                   dict(settings.get("templates") or {}), list(settings.get("rating_scale") or []))

    def data(self) -> RecData:
        """The dataset as serving knows it: each user's known history as their interactions (no ratings, reviews
        or times), with the features and templates that item and user descriptions render."""
        lengths = np.array([len(h) for h in self.histories], dtype=np.int64)
        n = int(lengths.sum())
        item = np.array([i for h in self.histories for i in h], dtype=np.int64)
        return RecData(self.name, self.users, self.items, np.repeat(np.arange(len(self.users)), lengths), item,
                       np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths),
                       np.full(n, np.nan, np.float32), [""] * n, [""] * n, np.concatenate([[0], np.cumsum(lengths)]),
                       self.item_features, self.user_features, self.templates)


# --- settings shared by both ways in ----------------------------------------------------------------------------
def datamodule_of(ckpt: dict[str, Any], tokenizer: PreTrainedTokenizerBase, where: str) -> RecDataModule:
    """The checkpoint's data module with its dataset, item index and (the checkpoint's) tokenizer loaded."""
    hp = ckpt.get("datamodule_hyper_parameters")
    if not isinstance(hp, dict) or not isinstance(hp.get("tasks"), list):
        raise CheckpointError(f"{where}: no datamodule_hyper_parameters with tasks; expected a checkpoint written "
                              f"by `recsys-lightning fit`")
    accepted = inspect.signature(RecDataModule.__init__).parameters  # not LightningCLI's `_instantiator` entry
    args = {**{k: v for k, v in hp.items() if k in accepted}, "tasks": [TaskSpec(**t) for t in hp["tasks"]],
            "semantic": SemanticIds(**hp["semantic"]) if hp.get("semantic") else None}
    datamodule = RecDataModule(**args)
    datamodule.use_tokenizer(tokenizer)
    datamodule.load()
    check_fingerprint(ckpt.get("dataset"), dataset_fingerprint(datamodule), where)
    return datamodule


def serving_settings(ckpt: dict[str, Any], datamodule: RecDataModule) -> dict[str, Any]:
    """recommender.json's settings: data settings, the item index, family specs, decoding settings."""
    hp, model = datamodule.hparams, ckpt.get("hyper_parameters") or {}
    index = datamodule.index
    assert index is not None
    return {"format_version": FORMAT_VERSION,
            "data": {key: hp[key] for key in ("format", "item_index", "seed", "max_length", "eval_batch_size",
                                              "task_dirs")},
            "index": {"kind": index.kind, "new_tokens": list(index.new_tokens)},
            "tasks": [dict(t) for t in hp["tasks"]],
            "model": {"beam_size": int(model.get("beam_size", 20)), "score_end": bool(model.get("score_end", True))}}


def build_families(tasks: list[dict[str, Any]], task_dirs: list[str] | None, folder: Path | None
                   ) -> dict[str, TaskFamily]:
    """The trained families with their options and prompts (an export's copies when `folder` is given)."""
    discover(task_dirs or [])
    families = {}
    for spec in tasks:
        family = get_task(spec["name"])(weight=spec.get("weight", 1.0), **(spec.get("options") or {}))
        if folder is not None and spec.get("prompts"):
            family.prompts = family.load_prompts(folder / spec["prompts"])
        families[family.name] = family
    return families


@dataclass(frozen=True)
class Query:
    """One next-item question: the user's name in prompts and the history (dense item ids) it comes after."""

    name: str
    history: list[int]


class Recommender:
    """Recommends, scores, rates and explains with a trained model, by raw user and item ids."""

    def __init__(self, network: nn.Module, tokenizer: PreTrainedTokenizerBase, catalog: Catalog,
                 families: dict[str, TaskFamily], settings: dict[str, Any], device: str | torch.device = "cpu"
                 ) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokens = GLMTokens.of(tokenizer)
        self.catalog = catalog
        self.settings = settings
        self.index = ItemIndex(settings["index"]["kind"], catalog.renders, tuple(settings["index"]["new_tokens"]))
        self.context = FamilyContext(catalog.data(), self.index, tokenizer, settings["data"]["seed"])
        for family in families.values():  # no dataset-level set-up: the rating scale comes from the catalog
            family.context = self.context
        self.families = families
        model = settings["model"]
        self.generator = Generator(self.network, self.tokens, model["beam_size"], score_end=model["score_end"])
        self.batch_size = int(settings["data"]["eval_batch_size"])
        self.max_length = int(settings["data"]["max_length"])
        self._user_ids = {u: i for i, u in enumerate(catalog.users)}
        self._item_ids = {it: i for i, it in enumerate(catalog.items)}
        self._transitions: dict[str, Transitions] = {}

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Recommender:
        """A `recsys-lightning fit` checkpoint; reads the dataset its saved data settings name."""
        path = Path(path)
        ckpt = read_checkpoint(path, "checkpoint")
        restored = restore(path)
        datamodule = datamodule_of(ckpt, restored.tokenizer, f"checkpoint {path}")
        assert datamodule.data is not None and datamodule.index is not None
        families = {family.name: family for family in datamodule.families}
        return cls(restored.network, restored.tokenizer, Catalog.of(datamodule.data, datamodule.index), families,
                   serving_settings(ckpt, datamodule), device)

    @classmethod
    def from_pretrained(cls, export_dir: str | Path, device: str | torch.device = "cpu") -> Recommender:
        """A `recsys-lightning export` folder; needs no dataset."""
        folder = Path(export_dir).expanduser().resolve()
        settings = read_settings(folder)
        config = settings["backbone"]
        init_args = {**config["init_args"], **{key: str(folder) for key in config.get("folder_args", [])}}
        backbone = instantiate_class((), {"class_path": config["class_path"], "init_args": init_args})
        tokenizer = backbone.tokenizer()
        if tokenizer is None:
            raise ValueError(f"{folder / SETTINGS_FILE}: backbone {config['class_path']} brings no tokenizer from "
                             f"the folder")
        network = backbone.build(tokenizer)
        families = build_families(settings["tasks"], [str(folder / d) for d in settings["data"]["task_dirs"]], folder)
        return cls(network, tokenizer, Catalog.load(folder, settings), families, settings, device)

    # --- ids ------------------------------------------------------------------------------------
    @property
    def items(self) -> list[str]:
        """The catalog's raw item ids, in index order."""
        return list(self.catalog.items)

    @property
    def users(self) -> list[str]:
        """The raw ids of the users the model knows."""
        return list(self.catalog.users)

    def _user(self, user: str) -> int:
        try:
            return self._user_ids[str(user)]
        except KeyError:
            raise UnknownIdError(f"unknown user {user!r}: not one of the model's {len(self._user_ids)} users (raw "
                                 f"ids such as {self.catalog.users[0]!r}); pass history= for a new user") from None

    def _item(self, item: str) -> int:
        try:
            return self._item_ids[str(item)]
        except KeyError:
            raise UnknownIdError(f"unknown item {item!r}: not in the model's catalog of {len(self._item_ids)} items "
                                 f"(raw ids such as {self.catalog.items[0]!r})") from None

    def _family(self, name: str, asked: str) -> TaskFamily:
        if name not in self.families:
            raise FamilyNotTrainedError(f"{asked} needs the {name!r} task family, but this model was trained with "
                                        f"{sorted(self.families)} only")
        return self.families[name]

    # --- prompts ----------------------------------------------------------------------------------
    def _template(self, family: TaskFamily, target: str, slots: frozenset[str], template: str | None) -> Template:
        """The named template, or the family's first seen one that asks for `target` with only `slots`."""
        usable = [t for t in family.prompts.templates if t.target == target and set(t.slots) <= slots
                  and (target != "item" or family.evaluates(t))]
        if template is None:
            seen = [t for t in usable if not t.unseen]
            if not seen:
                raise ValueError(f"task family {family.name!r} has no seen template that asks for {{{target}}} "
                                 f"from {sorted(slots - {target})} alone")
            return seen[0]
        match = [t for t in usable if t.id == template]
        if not match:
            raise ValueError(f"template {template!r}: not a usable {family.name} template; choose one of "
                             f"{[t.id for t in usable]}")
        return match[0]

    def _batch(self, family: TaskFamily, template: Template, values: list[dict[str, Any]], reserve: int
               ) -> dict[str, Any]:
        """Part A prompts of the rendered templates, as the test loop encodes them (`encode_rows`), leaving
        `reserve` tokens for the answer."""
        rendered = [template.render(v, family.entity_slots) for v in values]
        prompts, _ = tokenize(self.tokenizer, [r.text for r in rendered])
        openings, _ = tokenize(self.tokenizer, [r.opening for r in rendered])
        rows = []
        for prompt, opening in zip(prompts, openings):
            budget = self.max_length - len(opening) - reserve - 2
            ids, mask_index = part_a_ids(prompt, self.tokens, budget, f"template {template.id!r}")
            rows.append({"input_ids": ids, "mask_index": mask_index, "part_b_ids": opening})
        return {k: v.to(self.device) for k, v in collate_part_a(rows, self.tokens.pad).items()}

    @cached_property
    def _trie(self) -> Any:
        return self.context.item_trie.to(self.device)

    # --- next items -------------------------------------------------------------------------------
    def _queries(self, users: Sequence[str] | None, histories: Sequence[Sequence[str]] | None) -> list[Query]:
        """Known users' histories, or new users' given ones (a user name the model never saw)."""
        if (users is None) == (histories is None):
            raise ValueError("give either user(s) (known raw user ids) or history/histories (raw item ids), not both")
        if users is not None:
            return [Query(user_name(u), self.catalog.histories[u]) for u in map(self._user, users)]
        assert histories is not None
        queries = []
        for history in histories:
            if isinstance(history, (str, bytes)) or not history:
                raise ValueError(f"a history is a non-empty list of raw item ids, got {history!r}")
            queries.append(Query(user_name(len(self.catalog.users)), [self._item(i) for i in history]))
        return queries

    def _check_k(self, k: int) -> None:
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not 1 <= k <= len(self.catalog.items):
            raise ValueError(f"k must be an integer from 1 to the catalog's {len(self.catalog.items)} items, got {k!r}")

    def _next_item_batch(self, family: TaskFamily, queries: list[Query], template: str | None) -> dict[str, Any]:
        chosen = self._template(family, "item", NEXT_ITEM_SLOTS, template)
        shown = family.max_history  # type: ignore[attr-defined]  # the prompt shows the most recent items
        values = [{"user": q.name, "item": "", "history": [self.index.render(i) for i in q.history[-shown:]]}
                  for q in queries]
        return self._batch(family, chosen, values, self._trie.depth - 1)

    def _transition_prior(self, family: TaskFamily, histories: list[list[int]]) -> torch.Tensor | None:
        """The sequential family's transition prior (weight x log-prior), counted as the test loop counts it."""
        prior = getattr(family, "prior", None)
        if prior is None or not prior.weight:
            return None
        if prior.counts not in self._transitions:  # 'known': every known history; 'training': without validation
            sequences = [h if prior.counts == "known" else h[:-1] for h in self.catalog.histories]
            self._transitions[prior.counts] = Transitions.of_sequences(
                [np.asarray(s, dtype=np.int64) for s in sequences], len(self.catalog.items), prior.window,
                prior.decay)
        log_prior = self._transitions[prior.counts].log_prior(histories, prior.smoothing, prior.context, prior.decay)
        return prior.weight * log_prior.to(self.device)

    @torch.inference_mode()
    def recommend_batch(self, users: Sequence[str] | None = None, histories: Sequence[Sequence[str]] | None = None,
                        k: int = 10, exclude_seen: bool = True, template: str | None = None
                        ) -> list[list[tuple[str, float]]]:
        """The top-k (raw item id, score) of each user (or each new user's history), best first; the score is the
        item's log-likelihood as the next item (plus the family's transition prior, where it has one)."""
        self._check_k(k)
        family = self._family("sequential", "recommend")
        queries = self._queries(users, histories)
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(queries), self.batch_size):
            chunk = queries[start:start + self.batch_size]
            batch = self._next_item_batch(family, chunk, template)
            exclude = None
            if exclude_seen:
                exclude = torch.zeros(len(chunk), self._trie.num_items, dtype=torch.bool, device=self.device)
                for row, query in enumerate(chunk):
                    exclude[row, query.history] = True
            bias = self._transition_prior(family, [q.history for q in chunk])
            ranked, scores = self.generator.rank_items(batch, self._trie, k, exclude, bias)
            out += [[(self.catalog.items[i], float(s)) for i, s in zip(r, row) if i >= 0]
                    for r, row in zip(ranked.tolist(), scores.tolist())]
        return out

    def recommend(self, user: str | None = None, history: Sequence[str] | None = None, k: int = 10,
                  exclude_seen: bool = True, template: str | None = None) -> list[tuple[str, float]]:
        """The top-k (raw item id, score) for a known user (after their known history, which `exclude_seen`
        leaves out) or for a new user's `history` of raw item ids, best first."""
        return self.recommend_batch(None if user is None else [user], None if history is None else [history], k,
                                    exclude_seen, template)[0]

    @torch.inference_mode()
    def score(self, user: str, items: Sequence[str]) -> list[float]:
        """The model's log-likelihood of each item as the user's next item (the score `recommend` ranks by, without
        any transition prior): the candidate scoring the direct family uses."""
        family = self._family("sequential", "score")
        ids = [self._item(i) for i in items]
        queries = self._queries([user], None)
        if not ids:
            return []
        batch = self._next_item_batch(family, queries, None)
        candidates = self._trie.item_tokens[torch.tensor(ids, device=self.device)][None]
        return [score for part in candidates.split(SCORE_CHUNK, dim=1)  # bounded memory for a long item list
                for score in self.generator.score_items(batch, part)[0].tolist()]

    # --- ratings and explanations ----------------------------------------------------------------
    def _pair(self, family: TaskFamily, target: str, slots: frozenset[str], user: str, item: str, reserve: int
              ) -> dict[str, Any]:
        values = {"user": user_name(self._user(user)), "item": self.index.render(self._item(item)), target: ""}
        return self._batch(family, self._template(family, target, slots, None), [values], reserve)

    @cached_property
    def _ratings(self) -> RatingDecoder:
        family = self._family("rating", "rate")
        return RatingDecoder(self.context, getattr(family, "constrained", True), scale=self.catalog.rating_scale,
                             decoding=getattr(family, "decoding", None))

    @torch.inference_mode()
    def rate(self, user: str, item: str) -> float:
        """The rating family's prediction of the user's rating of the item (NaN where free decoding gives none)."""
        family = self._family("rating", "rate")
        decoder = self._ratings
        reserve = decoder.answers.candidates.shape[-1] if decoder.constrained else decoder.max_new_tokens
        value = decoder.decode(self.generator, self._pair(family, "rating", RATING_SLOTS, user, item, reserve))[0]
        return float("nan") if value is None else float(value)

    @torch.inference_mode()
    def explain(self, user: str, item: str) -> str:
        """The explanation family's sentence on why the user would like the item (its configured decoding)."""
        family = self._family("explanation", "explain")
        reserve = int(getattr(family, "max_new_tokens", 32))
        batch = self._pair(family, "explanation", EXPLANATION_SLOTS, user, item, reserve)
        return family.generate(self.generator, batch)[0]  # type: ignore[attr-defined]


# --- export -----------------------------------------------------------------------------------------------------
def read_settings(folder: Path) -> dict[str, Any]:
    """recommender.json of an export folder, checked for the keys loading needs."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected a folder written by `recsys-lightning export` (exports "
                                f"made before the recommender catalog existed need exporting again)")
    settings = json.loads(path.read_text())
    missing = [k for k in ("format_version", "dataset", "data", "index", "tasks", "model", "backbone")
               if k not in settings]
    if missing:
        raise ValueError(f"{path}: keys {missing} are missing")
    if settings["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {settings['format_version']}, this version reads {FORMAT_VERSION}")
    return settings


def export_recommender(ckpt_path: Path, out: Path) -> list[Path]:
    """`recsys-lightning export`: the model export (`model/export.py`) plus everything `from_pretrained` needs."""
    return export(ckpt_path, out, extra=partial(write_serving, ckpt_path))


def write_serving(ckpt_path: Path, restored: Restored, folder: Path) -> None:
    """The catalog, prompt files, recommender.json and README.md beside an exported model."""
    ckpt = read_checkpoint(ckpt_path)
    try:
        datamodule = datamodule_of(ckpt, restored.tokenizer, f"--ckpt_path {ckpt_path}")
    except (DataError, OSError) as err:
        raise DataError(f"--ckpt_path {ckpt_path}: the export's catalog is read from the dataset the checkpoint was "
                        f"trained on, which cannot be read here: {err}") from err
    assert datamodule.data is not None and datamodule.index is not None
    settings = serving_settings(ckpt, datamodule)
    backbone = yaml.safe_load((folder / "backbone.yaml").read_text())["model"]["backbone"]
    init_args = dict(backbone["init_args"])
    settings["backbone"] = {"class_path": backbone["class_path"], "init_args": init_args,
                            "folder_args": [k for k, v in init_args.items() if v == str(folder)]}
    for spec, family in zip(settings["tasks"], datamodule.families):
        spec["prompts"] = f"prompts/{family.name}.yaml"
        (folder / "prompts").mkdir(exist_ok=True)
        shutil.copyfile(family.prompts.path, folder / spec["prompts"])
    settings["data"]["task_dirs"] = copy_plugins(datamodule.families, task_dirs(datamodule.hparams.task_dirs or []),
                                                 folder)
    settings.update(Catalog.of(datamodule.data, datamodule.index).save(folder))
    settings["fingerprint"] = ckpt.get("dataset")
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    results = find_results(ckpt_path)
    model_card(settings, datamodule.data.stats(), ckpt, ckpt_path, results).save(folder / "README.md")


def copy_plugins(families: Sequence[TaskFamily], plugin_dirs: Sequence[Path], folder: Path) -> list[str]:
    """Copy the source file of each family from a plugin folder (a config's `task_dirs` or the environment's, not
    the shipped `tasks/` nor an installed entry point) into `folder/tasks`; return the task folders, relative to
    the export, that `from_pretrained` discovers."""
    dirs = {d.resolve() for d in plugin_dirs} - {builtin_dir("tasks").resolve()}
    plugins = [Path(f.source) for f in families if f.source and Path(f.source).resolve().parent in dirs]
    for source in plugins:
        (folder / "tasks").mkdir(exist_ok=True)
        shutil.copyfile(source, folder / "tasks" / source.name)
    return ["tasks"] if plugins else []


def find_results(ckpt_path: Path) -> Path | None:
    """The newest results.json of a test of this checkpoint, in its folder or its run folder (up to three levels
    down: `runs/demo/logs/version_0/results.json` beside `runs/demo/checkpoints/best.ckpt`)."""
    ckpt = ckpt_path.resolve()
    found = {p for root in (ckpt.parent, ckpt.parent.parent) for depth in range(4)
             for p in root.glob("/".join(["*"] * depth + ["results.json"]))}

    def tested(path: Path) -> bool:
        try:
            value = json.loads(path.read_text()).get("checkpoint")
        except (OSError, ValueError, AttributeError):
            return False
        return bool(value) and (Path(value).resolve() == ckpt or ckpt.as_posix().endswith("/" + Path(value).as_posix()))

    matching = [p for p in found if tested(p)]
    return max(matching, key=lambda p: p.stat().st_mtime) if matching else None


def metric_row(family: str, metrics: dict[str, Any], name: str) -> str:
    """One row of the model card's metrics table: a metric under seen templates and under unseen ones."""
    cell = lambda value: f"{value:.4f}" if isinstance(value, (int, float)) else "–"  # noqa: E731
    return f"| {family} | {name} | {cell(metrics.get(name))} | {cell(metrics.get('unseen/' + name))} |"


def model_card(settings: dict[str, Any], stats: dict[str, Any], ckpt: dict[str, Any], ckpt_path: Path,
               results: Path | None) -> ModelCard:
    """README.md: what was trained on what, how to load it, its test metrics (from results.json) and config."""
    families = [t["name"] for t in settings["tasks"]]
    data = settings["data"]
    backbone = settings["backbone"]["class_path"].rsplit(".", 1)[-1]
    lines = [f"# {settings['dataset']} recommender (recsys-lightning)", "",
             f"A blank-infilling language model ({backbone}) trained as a recommender with "
             f"recsys-lightning on {settings['dataset']} ({stats['users']} users, "
             f"{stats['items']} items, {stats['interactions']} interactions), items written as `{data['item_index']}` "
             f"ids, task families: {', '.join(families)}. Exported from `{ckpt_path.name}`; this folder needs no "
             f"dataset.", "", "## Use", "", "```python", "from recsys_lightning import Recommender",
             'rec = Recommender.from_pretrained("path/to/this/folder")', "print(rec.recommend(user=rec.users[0], k=5))",
             "```", ""]
    config: Any = {"model": ckpt.get("hyper_parameters"), "data": ckpt.get("datamodule_hyper_parameters")}
    if results is not None:
        run = json.loads(results.read_text())
        lines += ["## Test metrics", "", f"From `{results.name}` of the test run ({run.get('checkpoint')}): seen and "
                  f"unseen (zero-shot) templates.", "", "| family | metric | seen | unseen |", "|---|---|---|---|"]
        lines += [metric_row(family, metrics, name) for family, metrics in run.get("metrics", {}).items()
                  for name in metrics if not name.startswith("unseen/")]
        lines.append("")
        config = run.get("config") or config
    plain = json.loads(json.dumps(config, default=str))  # YAML of plain values only
    lines += ["## Training configuration", "", "```yaml", yaml.safe_dump(plain, sort_keys=False).rstrip(), "```", ""]
    card_data = ModelCardData(library_name="recsys-lightning", tags=["recommendation", "recsys-lightning", *families])
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))
