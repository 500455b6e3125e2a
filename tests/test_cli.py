"""The real CLI end to end on a tiny slice of the demo data: fit, test, predict, a plugin family, configs."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
import textwrap
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from recsys_lightning.cli import main, resolve_config_names
from recsys_lightning.builtin import builtin_dir
from tests.conftest import ONE_EPOCH, SEQUENTIAL_ONLY

TINY = [
    "--model.backbone.init_args.hidden_size", "32", "--model.backbone.init_args.num_layers", "1",
    "--model.backbone.init_args.num_attention_heads", "2", "--data.vocab_size", "300",
    "--data.batch_size", "16", "--data.eval_batch_size", "32", "--model.beam_size", "10",
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false", *ONE_EPOCH,
]


def run(sub: str, tmp: Path, root: Path, *extra: str, config: str = "lightning_configs/demo.yaml") -> Path:
    """A CLI run under `tmp` (its checkpoints in tmp/ckpt); returns its log folder, tmp/<name>/version_N."""
    main([sub, "--config", str(builtin_dir("lightning_configs").parent / config), *TINY,
          "--data.root", str(root), "--trainer.default_root_dir", str(tmp), "--data.cache_dir", str(tmp / "cache"),
          *extra, *(["--checkpoint.dirpath", str(tmp / "ckpt")] if sub == "fit" else [])])
    return max(tmp.glob("*/version_*"), key=lambda p: p.stat().st_mtime)


def test_fit_then_test_writes_checkpoints_and_results(tmp_path, tiny_reviews, capsys):
    run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file() and (tmp_path / "ckpt" / "best.ckpt").is_file()
    # a model setting given at test time wins over the one saved in the checkpoint (beam 10)
    out = run("test", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, "--model.beam_size", "12", "--ckpt_path",
              str(tmp_path / "ckpt" / "best.ckpt"))
    assert yaml.safe_load((out / "hparams.yaml").read_text())["beam_size"] == 12
    results = json.loads((out / "results.json").read_text())
    seq = results["metrics"]["sequential"]
    for name in ("hr@5", "hr@10", "ndcg@5", "ndcg@10", "unseen/hr@10", "unseen/ndcg@10"):
        assert 0.0 <= seq[name] <= 1.0
    assert seq["hr@5"] <= seq["hr@10"]
    assert results["dataset"]["users"] == 40 and results["dataset"]["examples"]["sequential"]["test-seen-item"] == 40
    assert results["checkpoint"].endswith("best.ckpt")
    assert results["config"]["data"]["root"] == str(tiny_reviews)
    printed = capsys.readouterr().out
    assert "results: " in printed and "test metrics" in printed

    predicted = run("predict", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, "--ckpt_path",
                    str(tmp_path / "ckpt" / "last.ckpt"))
    lines = [json.loads(line) for line in (predicted / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 40  # seen and unseen template streams, each line naming its own
    assert [line["stream"] for line in lines] == ["seen-item"] * 40 + ["unseen-item"] * 40
    assert len(lines[0]["items"]) == 10 and lines[0]["task"] == "sequential"
    scores = [i["score"] for i in lines[0]["items"]]
    assert scores == sorted(scores, reverse=True)


def test_a_fresh_fit_leaves_an_earlier_runs_checkpoints_alone(tmp_path, tiny_reviews, capsys):
    earlier = tmp_path / "ckpt" / "best.ckpt"
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier run")
    with refused(capsys, r"recsys-lightning: error: checkpoint.dirpath .*ckpt already holds best.ckpt from an "
                         r"earlier fit: resume it with --ckpt_path .*best.ckpt, give this run its own folder"):
        run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY)
    assert [p.name for p in earlier.parent.iterdir()] == ["best.ckpt"] and earlier.read_bytes() == b"an earlier run"
    assert not (tmp_path / "cache").exists()  # refused before any data preparation


@contextmanager
def refused(capsys, pattern: str):
    """The command stops with one line `recsys-lightning: error: ...` matching `pattern` and exit status 2."""
    with pytest.raises(SystemExit) as stop:
        yield
    err = capsys.readouterr().err
    assert stop.value.code == 2 and re.search(pattern, err), err
    assert [line for line in err.splitlines() if "error" in line] == [err.strip().splitlines()[-1]]


def trained_steps(log: Path) -> list[int]:
    return [int(r["step"]) for r in csv.DictReader((log / "metrics.csv").open()) if r.get("train/loss")]


def test_a_requeued_slurm_fit_resumes_from_its_hpc_checkpoint_into_the_same_folder(tmp_path, tiny_reviews,
                                                                                    monkeypatch, capsys):
    first = trained_steps(run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY))
    shutil.copy(tmp_path / "ckpt" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt")  # what SIGUSR1 + requeue leave
    with refused(capsys, "already holds best.ckpt, last.ckpt"):  # not under SLURM: no resume
        run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY)
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "recsys", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                       "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": "7"}.items():
        monkeypatch.setenv(key, value)
    resumed = trained_steps(run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, "--trainer.max_epochs", "2"))
    assert resumed and min(resumed) == max(first) + 1  # went on from the first job's last step, not from scratch


FAMILY_METRICS = {
    "sequential": ["hr@5", "hr@10", "ndcg@5", "ndcg@10"],
    "direct": ["hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "yes_no/hr@1", "yes_no/ndcg@10"],
    "rating": ["rmse", "mae", "unparsed_rate"],
    "explanation": ["bleu4", "rouge1", "rouge2", "rougeL"],
    "review": ["bleu2", "rouge1", "rouge2", "rougeL", "rmse", "mae", "unparsed_rate"],
}


def test_the_five_families_train_in_one_run_and_report_every_metric_seen_and_unseen(tmp_path, tiny_reviews):
    run("fit", tmp_path, tiny_reviews, "--trainer.limit_val_batches", "1")
    out = run("test", tmp_path, tiny_reviews, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"),
              "--trainer.limit_test_batches", "2")
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert set(metrics) == set(FAMILY_METRICS)
    for family, names in FAMILY_METRICS.items():
        for name in names:
            assert name in metrics[family] and f"unseen/{name}" in metrics[family], (family, name)
    assert metrics["rating"]["unparsed_rate"] == 0.0  # constrained decoding always yields a valid rating
    assert 0.0 <= metrics["rating"]["mae"] <= 4.0


def test_a_family_that_does_not_validate_trains_and_tests_but_is_left_out_of_validation(tmp_path, tiny_reviews):
    tasks = ["--data.tasks", '[{"name": "sequential"}, {"name": "direct"}]', "--data.validate", "[sequential]"]
    out = run("fit", tmp_path, tiny_reviews, *tasks, "--trainer.limit_val_batches", "1")
    logged = next(csv.reader((out / "metrics.csv").open()))
    assert "val/sequential/ndcg@10" in logged and "val/sequential/unseen/ndcg@10" in logged
    assert not [name for name in logged if name.startswith("val/direct/")]
    out = run("test", tmp_path, tiny_reviews, *tasks, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"),
              "--trainer.limit_test_batches", "1")
    direct = json.loads((out / "results.json").read_text())["metrics"]["direct"]
    assert {"hr@10", "unseen/hr@10", "yes_no/hr@10"} <= set(direct)


def test_a_monitor_on_a_family_left_out_of_validation_or_an_unknown_family_fails_before_training(tmp_path, tiny_reviews, capsys):
    with refused(capsys, r"monitors 'val/direct/ndcg@10', but data.validate leaves family 'direct' out"):
        run("fit", tmp_path, tiny_reviews, "--data.tasks", '[{"name": "sequential"}, {"name": "direct"}]',
            "--data.validate", "[sequential]", "--checkpoint.monitor", "val/direct/ndcg@10")
    with refused(capsys, r"data.validate: \['rating'\] must name some of the families in data.tasks"):
        run("fit", tmp_path, tiny_reviews, "--data.validate", "[rating]", *SEQUENTIAL_ONLY)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_lora_run_trains_only_adapters_and_its_checkpoint_needs_lora(tmp_path, tiny_reviews, capsys):
    run("fit", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, "--model.lora", "{r: 4, alpha: 8}",
        "--trainer.limit_val_batches", "1")
    import torch
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert any("lora_A" in k for k in state)
    # testing it under a config that sets model.lora: null is refused in one line, before any weight is loaded
    with refused(capsys, r"last.ckpt was trained with LoRA but the configured model.lora is null; pass "
                         r"--model.lora '\{'r': 4, 'alpha': 8"):
        run("test", tmp_path, tiny_reviews, *SEQUENTIAL_ONLY, "--model.lora", "null", "--ckpt_path",
            str(tmp_path / "ckpt" / "last.ckpt"))


PLUGIN = textwrap.dedent('''
    """Example plugin: the star rating a user gives to their held-out item, decoded over a Trie of ratings."""
    from torchmetrics import MeanAbsoluteError

    from recsys_lightning.data.splits import leave_one_out
    from recsys_lightning.family import Request, TaskFamily
    from recsys_lightning.generation.trie import ItemTrie
    from recsys_lightning.registry import register_task

    RATINGS = ["1", "2", "3", "4", "5"]

    @register_task("held_out_rating")
    class HeldOutRating(TaskFamily):
        slots = frozenset({"user", "item", "rating"})
        entity_slots = frozenset({"user", "item"})
        meta_columns = ("rating_value",)

        def setup(self, context):
            super().setup(context)
            ids = context.tokenizer(RATINGS, add_special_tokens=False)["input_ids"]
            self.trie = ItemTrie(ids, context.tokenizer.convert_tokens_to_ids("<|endofpiece|>"))

        def requests(self, data, split):
            for user in range(data.num_users):
                rows = list(data.interactions_of(user))
                cut = leave_one_out(rows, split)
                if cut is not None:
                    row = cut[1]
                    rating = int(data.rating[row])
                    yield Request({"user": f"user_{user}", "item": self.ctx.index.render(int(data.item[row])),
                                   "rating": str(rating)}, {"rating_value": rating})

        def metrics(self, target):
            return {"mae": MeanAbsoluteError()}

        def evaluate(self, generator, batch, metrics):
            ranked, _ = generator.rank_items(batch, self.trie.to(batch["input_ids"].device), 1)
            metrics["mae"].update((ranked[:, 0] + 1).float(), batch["rating_value"].float())

        def predict(self, generator, batch):
            ranked, _ = generator.rank_items(batch, self.trie.to(batch["input_ids"].device), 1)
            return [{"rating": int(r) + 1} for r in ranked[:, 0]]
''')


def test_a_new_family_file_trains_through_the_cli_without_touching_the_core(tmp_path, tiny_reviews):
    plugin = tmp_path / "plugin"
    (plugin / "tasks").mkdir(parents=True)
    (plugin / "prompts").mkdir()
    (plugin / "tasks" / "held_out_rating.py").write_text(PLUGIN)
    (plugin / "prompts" / "held_out_rating.yaml").write_text(yaml.safe_dump({"templates": [
        {"id": "r-1", "text": "How many stars does {user} give {item}? {rating}", "target": "rating"},
        {"id": "r-2", "text": "{user} rates item {item} with {rating} stars.", "target": "rating", "unseen": True},
    ]}))
    tasks = json.dumps([{"name": "held_out_rating"}, {"name": "sequential", "weight": 0.5}])
    common = ["--data.task_dirs", json.dumps([str(plugin / "tasks")]), "--data.tasks", tasks,
              "--checkpoint.monitor", "val/held_out_rating/mae", "--checkpoint.mode", "min"]
    run("fit", tmp_path, tiny_reviews, *common)
    out = run("test", tmp_path, tiny_reviews, *common[:4], "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"))
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert 0.0 <= metrics["held_out_rating"]["mae"] <= 4.0
    assert "unseen/mae" in metrics["held_out_rating"] and "hr@10" in metrics["sequential"]


def test_tasks_command_lists_families(capsys):
    main(["tasks"])
    out = capsys.readouterr().out
    assert "sequential" in out and "tasks/sequential.py" in out and "ndcg@10" in out


def test_print_config_round_trips(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(builtin_dir("lightning_configs") / "demo.yaml"), "--print_config"])
    assert done.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["tasks"][0]["name"] == "sequential"
    assert config["checkpoint"]["save_last"] is True


def test_unscored_end_token_needs_prefix_free_item_ids_and_fails_before_training(tmp_path, tiny_reviews, capsys):
    with refused(capsys, r"model.score_end: false needs .* family 'sequential'"):
        run("fit", tmp_path, tiny_reviews, "--model.score_end", "false")  # demo ids are digits: 1 begins 12
    assert not list(tmp_path.rglob("*.ckpt"))


def test_bad_family_option_fails_before_training(tmp_path, tiny_reviews, capsys):
    with refused(capsys, r"data.tasks\[0\] \(sequential\): bad options"):
        run("fit", tmp_path, tiny_reviews, "--data.tasks", '[{"name": "sequential", "options": {"colour": 1}}]',
            "--checkpoint.monitor", "val/sequential/ndcg@10")


def test_a_refit_fits_without_validation_and_refuses_families_it_cannot_refit_before_training(tmp_path, tiny_reviews,
                                                                                           capsys):
    refit = ["--config", str(builtin_dir("lightning_configs") / "method" / "refit.yaml"),  # its own run folders:
             "--trainer.default_root_dir", str(tmp_path)]
    with refused(capsys, r"families \['rating', 'explanation', 'review'\] cannot"):
        run("fit", tmp_path / "mixed", tiny_reviews, *refit)  # the demo's tasks: sequential, direct, rating
    assert not list(tmp_path.rglob("*.ckpt"))
    out = run("fit", tmp_path, tiny_reviews, *refit, *SEQUENTIAL_ONLY)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    logged = (out / "metrics.csv").read_text()
    assert "train/loss" in logged and "val/" not in logged


def test_default_root_dir_moves_checkpoints_and_both_loggers_files(tmp_path, tiny_reviews, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo config's own root is runs/demo: nothing may land there
    root = tmp_path / "x"
    main(["fit", "--config", "demo", *TINY, *SEQUENTIAL_ONLY, "--data.root", str(tiny_reviews),
          "--data.cache_dir", str(tmp_path / "cache"), "--trainer.default_root_dir", str(root)])
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    run_folder = root / "logs" / "version_0"  # CSV and TensorBoard share one version folder
    assert (run_folder / "metrics.csv").is_file() and list(run_folder.glob("events.out.tfevents.*"))
    assert (run_folder / "config.yaml").is_file() and not (root / "logs" / "version_1").exists()
    assert not (tmp_path / "runs").exists()


def test_config_names_resolve_to_shipped_configs_and_a_real_path_wins(tmp_path, monkeypatch, capsys):
    configs = builtin_dir("lightning_configs")
    args = resolve_config_names(["fit", "--config", "demo", "--config=method/recsysllm", "--config",
                                 "backbones/minilm.yaml", "--data.root", "demo"])
    assert args == ["fit", "--config", str(configs / "demo.yaml"), f"--config={configs / 'method' / 'recsysllm.yaml'}",
                    "--config", str(configs / "backbones" / "minilm.yaml"), "--data.root", "demo"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("seed_everything: 7\n")
    assert resolve_config_names(["--config", "demo"]) == ["--config", "demo"]
    with pytest.raises(SystemExit) as done:  # a name, end to end through the LightningCLI
        main(["fit", "--config", "method/recsysllm", "--print_config"])
    assert done.value.code == 0 and yaml.safe_load(capsys.readouterr().out)["data"]["item_index"] == "atomic"
    with pytest.raises(SystemExit) as done:  # and through `prepare`
        main(["prepare", "--config", "method/recsysllm", "--print_config"])
    assert done.value.code == 0 and yaml.safe_load(capsys.readouterr().out)["data"]["item_index"] == "atomic"


def test_an_unknown_config_name_is_named_with_close_names(capsys):
    with refused(capsys, r"--config method/recsysllmm: no such file, and no shipped config of that name "
                         r"\(close names: method/recsysllm"):
        main(["fit", "--config", "method/recsysllmm"])


def test_configs_command_lists_every_shipped_config_with_its_header(capsys):
    main(["configs"])
    out = capsys.readouterr().out
    for path in builtin_dir("lightning_configs").rglob("*.yaml"):
        assert str(path.relative_to(builtin_dir("lightning_configs")).with_suffix("")) in out, path
    assert "method/recsysllm" in out and "Method: the RecSysLLM recipe." in out and "loggers/wandb" in out


SUBCOMMANDS = ["fit", "validate", "test", "predict", "tasks", "prepare", "export", "configs", "serve", "plan"]


def test_help_lists_every_subcommand_and_each_has_its_own_help(capsys, monkeypatch):
    main(["--help"])
    listed = re.findall(r"^  (\w+) ", capsys.readouterr().out, flags=re.MULTILINE)
    assert listed == SUBCOMMANDS
    fake = types.ModuleType("recsys_lightning.serve")
    fake.serve_command = lambda argv: argparse.ArgumentParser(prog="recsys-lightning serve").parse_args(argv)
    monkeypatch.setitem(sys.modules, "recsys_lightning.serve", fake)
    for sub in SUBCOMMANDS:
        with pytest.raises(SystemExit) as done:
            main([sub, "--help"])
        usage = capsys.readouterr().out.split("\n")[0]
        assert done.value.code == 0 and re.match(rf"usage: recsys-lightning (\[options\] )?{sub}\b", usage), usage


def test_serve_is_dispatched_lazily_and_without_its_extra_says_what_to_install(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("recsys_lightning.serve")
    fake.serve_command = seen.append
    monkeypatch.setitem(sys.modules, "recsys_lightning.serve", fake)
    main(["serve", "--model", "exported"])
    assert seen == [["--model", "exported"]]
    monkeypatch.setitem(sys.modules, "recsys_lightning.serve", None)  # import fails, as without the extra
    with refused(capsys, r"serve needs the `serve` extra: pip install 'recsys-lightning\[serve\]'"):
        main(["serve"])


def test_a_method_overlays_run_is_one_version_folder_holding_both_logs_and_its_checkpoints(tmp_path, tiny_reviews):
    main(["fit", "--config", "demo", "--config", "method/id_only", *TINY, *SEQUENTIAL_ONLY, "--data.root",
          str(tiny_reviews), "--data.cache_dir", str(tmp_path / "cache"), "--trainer.default_root_dir", str(tmp_path)])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/version_*")) == ["id_only/version_0"]
    run_folder = tmp_path / "id_only" / "version_0"  # runs/<dataset>/<overlay>/version_N
    assert (run_folder / "metrics.csv").is_file() and list(run_folder.glob("events.out.tfevents.*"))
    assert (run_folder / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "checkpoints").exists()


def test_a_config_that_sets_the_logger_keeps_its_choice_and_the_default_is_csv_plus_tensorboard(tmp_path, capsys):
    def loggers(*extra: str):
        with pytest.raises(SystemExit) as done:
            main(["fit", "--config", "demo", *extra, "--print_config"])
        assert done.value.code == 0
        return yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]

    assert [lg["class_path"] for lg in loggers()] == ["lightning.pytorch.loggers.CSVLogger",
                                                       "lightning.pytorch.loggers.TensorBoardLogger"]
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({"trainer": {"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                          "init_args": {"save_dir": "elsewhere"}}}}))
    chosen = loggers("--config", str(own))
    assert chosen["class_path"].endswith(".CSVLogger") and chosen["init_args"]["save_dir"] == "elsewhere"
