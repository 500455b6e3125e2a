"""`Recommender` on a tiny model fitted in-process (sequential, rating and explanation on 40 demo users), exported
with `recsys-lightning export`: it answers from the export folder alone as the CLI's predict loop answers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from recsys_lightning import FamilyNotTrainedError, Recommender, UnknownIdError
from recsys_lightning.cli import main
from recsys_lightning.builtin import builtin_dir
from recsys_lightning.data.indexing import sequential_ids
from recsys_lightning.data.schema import RecData
from recsys_lightning.data.textualize import describe_item, describe_user
from recsys_lightning.family import seeded_choice
from tasks.sequential import Sequential
from recsys_lightning import recommender
from recsys_lightning.recommender import Catalog, copy_plugins
from tests.conftest import ONE_EPOCH, write_reviews

TASKS = json.dumps([{"name": "sequential"}, {"name": "rating"}, {"name": "explanation"}])
PRIOR = {"weight": 0.7, "context": 2, "decay": 0.5}  # a decoding option: the same checkpoint decodes with it
PRIOR_TASKS = json.dumps([{"name": "sequential", "options": {"prior": PRIOR}}, {"name": "rating"},
                          {"name": "explanation"}])
TINY = ["--model.backbone.init_args.hidden_size", "32", "--model.backbone.init_args.num_layers", "1",
        "--model.backbone.init_args.num_attention_heads", "2", "--data.vocab_size", "300",
        "--data.batch_size", "16", "--data.eval_batch_size", "32", "--model.beam_size", "10",
        "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", *ONE_EPOCH, "--data.tasks", TASKS,
        "--checkpoint.monitor", "val/sequential/ndcg@10"]


def run(sub: str, tmp: Path, root: Path, *extra: str) -> None:
    main([sub, "--config", str(builtin_dir("lightning_configs").parent / "lightning_configs/demo.yaml"), *TINY,
          "--data.root", str(root), "--trainer.default_root_dir", str(tmp), "--data.cache_dir", str(tmp / "cache"),
          *extra,
          *(["--checkpoint.dirpath", str(tmp / "ckpt")] if sub == "fit" else [])])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A fitted tiny model (ckpt/last.ckpt), its test results and predictions (logs/) and its export (export/,
    by `recsys-lightning export`)."""
    tmp = tmp_path_factory.mktemp("recommender")
    root = write_reviews(tmp / "reviews", users=40)
    run("fit", tmp, root)
    ckpt = tmp / "ckpt" / "last.ckpt"
    run("test", tmp, root, "--ckpt_path", str(ckpt), "--trainer.limit_test_batches", "1")
    run("predict", tmp, root, "--ckpt_path", str(ckpt), "--trainer.limit_predict_batches", "1")
    run("predict", tmp, root, "--ckpt_path", str(ckpt), "--trainer.limit_predict_batches", "1",
        "--trainer.default_root_dir", str(tmp / "prior"), "--data.tasks", PRIOR_TASKS)
    main(["export", "--ckpt_path", str(ckpt), "--out", str(tmp / "export")])
    return tmp


@pytest.fixture(scope="module")
def predictions(run_dir) -> list[dict[str, Any]]:
    """The predict loop's answers: each stream's first batch (32 requests), seen templates first, in dataset
    order."""
    path = next((run_dir / "logs").rglob("predictions.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def rec(run_dir) -> Recommender:
    """The export loaded while the dataset is moved away (and put back for the other fixtures' readers)."""
    root, moved = run_dir / "reviews", run_dir / "moved"
    root.rename(moved)
    try:
        return Recommender.from_pretrained(run_dir / "export")
    finally:
        moved.rename(root)


def test_export_folder_holds_the_catalog_prompts_settings_and_a_model_card(run_dir):
    folder = run_dir / "export"
    for name in ("recommender.json", "catalog/items.parquet", "catalog/users.parquet", "prompts/sequential.yaml",
                 "prompts/rating.yaml", "prompts/explanation.yaml", "backbone.yaml", "model.safetensors",
                 "tokenizer.json", "README.md"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "config.json").read_text())["model_type"] == "recsys_lightning_glm"
    card = (folder / "README.md").read_text()
    assert "library_name: recsys-lightning" in card and "| sequential | hr@10 |" in card and "| seen | unseen |" in card
    assert "Recommender.from_pretrained" in card and "## Training configuration" in card


def test_recommend_from_the_export_alone_equals_the_predict_loop(rec, predictions):
    family = rec.families["sequential"]
    templates = tuple(t for t in family.prompts.seen if family.evaluates(t))
    lines = [p for p in predictions if p["task"] == "sequential"][:32]
    assert [p["user"] for p in lines] == rec.users[:32]  # every demo user has a test request, in dense-id order
    default = 0
    for i, line in enumerate(lines[:12]):
        template = seeded_choice(templates, 0, "test", i).id  # the template the test loop drew for this request
        got = rec.recommend(user=line["user"], k=10, template=template)
        assert [item for item, _ in got] == [p["item"] for p in line["items"]]
        assert [score for _, score in got] == pytest.approx([p["score"] for p in line["items"]], abs=2e-4)
        if template == templates[0].id:  # the first seen template is recommend's own
            assert rec.recommend(user=line["user"], k=10) == got
            default += 1
    assert default >= 1


def test_a_transition_prior_ranks_as_the_predict_loop_ranks_with_it(run_dir, rec):
    path = next((run_dir / "prior" / "logs").rglob("predictions.jsonl"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines = [p for p in lines if p["task"] == "sequential"][:8]
    options = next(t["options"] for t in rec.settings["tasks"] if t["name"] == "sequential")
    family = Sequential(**{**options, "prior": PRIOR})
    family.prompts = rec.families["sequential"].prompts
    with_prior = Recommender(rec.network, rec.tokenizer, rec.catalog, {"sequential": family}, rec.settings)
    templates = tuple(t for t in family.prompts.seen if family.evaluates(t))
    changed = 0
    for i, line in enumerate(lines):
        template = seeded_choice(templates, 0, "test", i).id
        got = with_prior.recommend(user=line["user"], k=10, template=template)
        assert [item for item, _ in got] == [p["item"] for p in line["items"]]
        assert [score for _, score in got] == pytest.approx([p["score"] for p in line["items"]], abs=2e-4)
        changed += got != rec.recommend(user=line["user"], k=10, template=template)
    assert changed  # the prior moved the ranking


def test_exclude_seen_leaves_the_known_history_out(rec):
    user = rec.users[3]
    history = {rec.items[i] for i in rec.catalog.histories[3]}
    everything = rec.recommend(user=user, k=len(rec.items), exclude_seen=False)
    assert {item for item, _ in everything} == set(rec.items)
    kept = rec.recommend(user=user, k=len(rec.items))
    assert not history & {item for item, _ in kept}
    rest = [pair for pair in everything if pair[0] not in history][:20]
    assert [item for item, _ in rest] == [item for item, _ in kept[:20]]
    assert [score for _, score in rest] == pytest.approx([score for _, score in kept[:20]], abs=1e-4)


def test_a_new_users_history_is_recommended_after_and_excluded(rec):
    history = [rec.items[5], rec.items[17], rec.items[2]]
    got = rec.recommend(history=history, k=10)
    assert len(got) == 10 and not set(history) & {item for item, _ in got}
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)
    everything = rec.recommend(history=history, k=len(rec.items), exclude_seen=False)
    assert set(history) <= {item for item, _ in everything}


def test_batched_equals_one_by_one(rec):
    users = rec.users[:5]
    batched = rec.recommend_batch(users=users, k=7)
    for user, got in zip(users, batched):
        single = rec.recommend(user=user, k=7)
        assert [i for i, _ in got] == [i for i, _ in single]
        assert [s for _, s in got] == pytest.approx([s for _, s in single], abs=1e-4)
    histories = [[rec.items[1], rec.items[2]], [rec.items[9]]]
    assert [[i for i, _ in r] for r in rec.recommend_batch(histories=histories, k=4)] == \
        [[i for i, _ in rec.recommend(history=h, k=4)] for h in histories]


def test_score_agrees_with_recommend(rec, monkeypatch):
    user = rec.users[7]
    top = rec.recommend(user=user, k=10)
    scores = rec.score(user, [item for item, _ in top])
    assert scores == pytest.approx([s for _, s in top], abs=1e-4)
    monkeypatch.setattr(recommender, "SCORE_CHUNK", 3)  # long item lists are scored in parts
    assert rec.score(user, [item for item, _ in top]) == pytest.approx(scores, abs=1e-5)
    history = rec.items[rec.catalog.histories[7][0]]
    assert rec.score(user, [history, top[0][0]])[1] == pytest.approx(top[0][1], abs=1e-4)


def test_rate_and_explain_answer_as_the_predict_loop(rec, predictions):
    for family, key, call in (("rating", "rating", rec.rate), ("explanation", "explanation", rec.explain)):
        templates = rec.families[family].prompts.seen
        lines = [p for p in predictions if p["task"] == family]
        lines = lines[: len(lines) // 2]  # the seen stream, then the unseen one (as many rows)
        first = [line for i, line in enumerate(lines) if seeded_choice(templates, 0, "test", i) == templates[0]]
        assert first, family
        for line in first:
            assert call(line["user"], line["item"]) == line[key]
    rating = rec.rate(rec.users[0], rec.items[0])
    assert rating in rec.catalog.rating_scale and isinstance(rec.explain(rec.users[0], rec.items[0]), str)


def test_a_family_the_model_was_not_trained_with_is_named(rec):
    only = Recommender(rec.network, rec.tokenizer, rec.catalog, {"sequential": rec.families["sequential"]},
                       rec.settings)
    with pytest.raises(FamilyNotTrainedError, match=r"rate needs the 'rating' task family, but this model was "
                                                    r"trained with \['sequential'\] only"):
        only.rate(rec.users[0], rec.items[0])
    with pytest.raises(FamilyNotTrainedError, match="'explanation'"):
        only.explain(rec.users[0], rec.items[0])


def test_unknown_ids_and_bad_k_are_refused(rec):
    with pytest.raises(UnknownIdError, match="unknown user 'nobody'") as caught:
        rec.recommend(user="nobody")
    assert isinstance(caught.value, KeyError) and "nobody" in str(caught.value)
    with pytest.raises(UnknownIdError, match="unknown item 'no-such-item'"):
        rec.recommend(history=[rec.items[0], "no-such-item"])
    with pytest.raises(UnknownIdError, match="unknown item"):
        rec.score(rec.users[0], ["no-such-item"])
    with pytest.raises(UnknownIdError, match="unknown user"):
        rec.rate("nobody", rec.items[0])
    for k in (0, len(rec.items) + 1):
        with pytest.raises(ValueError, match="k must be an integer from 1"):
            rec.recommend(user=rec.users[0], k=k)
    with pytest.raises(ValueError, match="either user"):
        rec.recommend(user=rec.users[0], history=[rec.items[0]])


def test_from_checkpoint_equals_from_pretrained(run_dir, rec):
    direct = Recommender.from_checkpoint(run_dir / "ckpt" / "last.ckpt")
    assert direct.items == rec.items and direct.users == rec.users
    users = rec.users[:4]
    for a, b in zip(direct.recommend_batch(users=users, k=10), rec.recommend_batch(users=users, k=10)):
        assert [i for i, _ in a] == [i for i, _ in b]
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-5)
    assert direct.rate(users[0], rec.items[3]) == rec.rate(users[0], rec.items[3])
    assert direct.explain(users[0], rec.items[3]) == rec.explain(users[0], rec.items[3])


def test_plugin_family_files_travel_with_the_export(tmp_path):
    plugin = tmp_path / "plugins" / "mine.py"
    plugin.parent.mkdir()
    plugin.write_text("# a task family file\n")
    families = [SimpleNamespace(source=str(plugin)), SimpleNamespace(source=str(builtin_dir("tasks") / "rating.py"))]
    (tmp_path / "export").mkdir()
    assert copy_plugins(families, [builtin_dir("tasks"), plugin.parent], tmp_path / "export") == ["tasks"]
    assert [p.name for p in (tmp_path / "export" / "tasks").iterdir()] == ["mine.py"]
    assert copy_plugins(families[1:], [builtin_dir("tasks")], tmp_path / "other") == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_recommender_answers_as_the_cpu_one(run_dir, rec):
    gpu = Recommender.from_pretrained(run_dir / "export", device="cuda")
    assert next(gpu.network.parameters()).is_cuda
    for a, b in zip(gpu.recommend_batch(users=rec.users[:4], k=10), rec.recommend_batch(users=rec.users[:4], k=10)):
        assert [i for i, _ in a] == [i for i, _ in b]
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-3)
    assert gpu.rate(rec.users[0], rec.items[1]) == rec.rate(rec.users[0], rec.items[1])


def test_the_catalog_round_trips_histories_features_and_descriptions(tmp_path):
    data = RecData.build(
        "shop", ["u1", "u1", "u1", "u2", "u2", "u2", "u2"], ["a", "b", "c", "b", "c", "a", "d"], [1, 2, 3, 1, 2, 3, 4],
        ratings=[5, 4, 3, 2, 5, 1, 4],
        item_features={"title": {"a": "Strings", "b": "Tuner", "d": "Capo"}, "price": {"a": 5, "b": 12.5, "c": "n/a"},
                       "categories": {"a": ["Guitar", "Strings"], "c": ["Picks"]}},
        user_features={"age": {"u1": 31}},
        templates={"item": "item {item}[ titled {title}][ in {categories}]", "user": "{user}[, aged {age}]"})
    index = sequential_ids(data, 0)
    Catalog.of(data, index).save(tmp_path)
    loaded = Catalog.load(tmp_path, {"dataset": "shop", "templates": data.templates, "rating_scale": [1, 2, 3, 4, 5]})
    assert loaded.users == ["u1", "u2"] and loaded.items == ["a", "b", "c", "d"]
    assert loaded.histories == [[0, 1], [1, 2, 0]]  # all but each user's test item
    assert loaded.item_features == data.item_features and loaded.user_features == data.user_features
    served = loaded.data()
    assert [served.sequence(u).tolist() for u in range(2)] == loaded.histories
    assert [describe_item(served, index, i) for i in range(4)] == [describe_item(data, index, i) for i in range(4)]
    assert [describe_user(served, u) for u in range(2)] == [describe_user(data, u) for u in range(2)]
