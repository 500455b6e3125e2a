"""Sharding helpers; data parallelism on CPU (gloo, 2 processes): resume mid-epoch under DDP and FSDP2, exact
evaluation, an HF backbone sharded like the native GLM. All two-process runs share one torchrun launch
(tests/distributed_runner.py), so the libraries load once; the environment a test process may carry (MASTER_*,
LOCAL_RANK, PL_*, ...) is removed first (see PITFALLS.md).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torchmetrics import MetricCollection
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from recsys_lightning.cli import main
from recsys_lightning.distributed import merge_list_states, shard_network, transformer_blocks
from recsys_lightning.metrics import ranking_metrics, update_ranking
from recsys_lightning.model.glm import GLMBlock
from recsys_lightning.model.lora import LoRA, LoRADefaults, apply_lora
from tests.conftest import REPO, SEQUENTIAL_ONLY, make_glm, write_reviews

CONFIGS = REPO / "lightning_configs"


def test_transformer_blocks_are_found_by_shape_in_native_peft_and_hf_models():
    glm = make_glm(100)
    assert transformer_blocks(glm) is glm.transformer.layers
    lora = apply_lora(make_glm(100), LoRA(r=2), LoRADefaults(("query_key_value",)))
    assert len(transformer_blocks(lora)) == 2 and isinstance(transformer_blocks(lora)[0], GLMBlock)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert transformer_blocks(llama) is llama.model.layers
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2))
    assert transformer_blocks(gpt2) is gpt2.transformer.h
    with pytest.raises(ValueError, match="no nn.ModuleList of transformer blocks"):
        transformer_blocks(nn.Linear(2, 2))


def test_outside_a_sharding_strategy_the_network_is_left_as_built():
    glm = make_glm(100)
    blocks = list(glm.transformer.layers)
    assert shard_network(glm, None) is glm and list(glm.transformer.layers) == blocks


@pytest.mark.parametrize("script", ["torchrun.sh", "slurm.sbatch"])
def test_cluster_launch_scripts_are_valid_bash(script):
    path = CONFIGS / "cluster" / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert "lightning_configs/strategy/$strategy.yaml" in path.read_text()


def test_merged_list_states_compute_the_same_metrics():
    plain, merged = (MetricCollection(ranking_metrics((5,), (5,))) for _ in range(2))
    for b in range(3):
        ranked = torch.randint(0, 20, (8, 5), generator=torch.Generator().manual_seed(b))
        for metrics in (plain, merged):
            update_ranking(metrics, ranked, ranked[:, b], torch.arange(8) + 8 * b)
    merge_list_states(merged)
    assert all(len(v) == 1 for m in merged.values() for v in m.metric_state.values())
    assert {k: float(v) for k, v in merged.compute().items()} == {k: float(v) for k, v in plain.compute().items()}


TINY = [
    "--config", str(CONFIGS / "demo.yaml"),
    "--model.backbone.init_args.hidden_size", "32", "--model.backbone.init_args.num_layers", "2",
    "--model.backbone.init_args.num_attention_heads", "2", "--model.backbone.init_args.hidden_dropout", "0",
    "--model.backbone.init_args.attention_dropout", "0", "--data.vocab_size", "300", "--data.batch_size", "8",
    "--data.eval_batch_size", "16", "--model.beam_size", "10", "--trainer.enable_progress_bar", "false",
    "--trainer.accelerator", "cpu", "--trainer.log_every_n_steps", "1", "--data.cache_dir", "null",
    "--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1", "--data.pack_length", "null",
    *SEQUENTIAL_ONLY,
]  # unpacked rows: an epoch of 41 users' windows is a few steps, so the runs cross epochs after the cut
CUT = {"ddp": 4, "fsdp2": 6}  # the step each interrupted run stops at; every run goes on to STEPS
STEPS = 12
LORA = ["--model.lora", "{r: 4, alpha: 8, dropout: 0.0}"]  # FSDP2 runs train LoRA adapters
RECORD = ["--trainer.callbacks+=tests.distributed_runner.RequestLog"]
LLAMA_STEPS = 4
USERS = 41  # an odd request count: a padding sampler would decode one request twice


def cli(sub: str, out: Path, strategy: str | None, data: Path, *extra: str) -> list[str]:
    """A CLI invocation logging under `out`; `strategy` composes lightning_configs/strategy/<strategy>.yaml."""
    config = ["--config", str(CONFIGS / "strategy" / f"{strategy}.yaml"), "--trainer.devices", "2"] if strategy else []
    return [sub, *TINY, *config, "--data.root", str(data), "--trainer.default_root_dir", str(out), *extra]


def fit(root: Path, data: Path, strategy: str, name: str, steps: int, *extra: str) -> list[str]:
    """A fit that checkpoints every step into root/<strategy>/<run>/ckpt (the resumed run continues the cut one's)."""
    run = name.removesuffix("_resumed")
    return cli("fit", root / strategy / name, strategy, data, "--trainer.max_steps", str(steps),
               "--checkpoint.dirpath", str(root / strategy / run / "ckpt"), "--checkpoint.monitor", "null",
               "--checkpoint.every_n_train_steps", "1", "--trainer.limit_val_batches", "1",
               "--trainer.check_val_every_n_epoch", "1", "--model.schedule", "constant", "--model.warmup_steps", "3",
               *(LORA if strategy == "fsdp2" else []), *extra)


def torchrun(runs: list[list[str]]) -> None:
    """Run CLI invocations one after another in the same two gloo processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    leaked = ("MASTER_", "PL_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK", "TORCHELASTIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(leaked)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])  # for tests.distributed_runner
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(REPO / "tests" / "distributed_runner.py"), json.dumps(runs)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        pytest.fail(f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Resume runs under DDP and FSDP2, then test and predict of one checkpoint on two processes and on one."""
    root = tmp_path_factory.mktemp("distributed")
    data = write_reviews(root / "reviews", users=USERS)
    ckpt = root / "ddp" / "full" / "ckpt" / "last.ckpt"
    plan = []
    for strategy, cut in CUT.items():
        plan += [fit(root, data, strategy, "full", STEPS), fit(root, data, strategy, "cut", cut),
                 fit(root, data, strategy, "cut_resumed", STEPS, "--ckpt_path",
                     str(root / strategy / "cut" / "ckpt" / "last.ckpt"))]
    plan += [cli(sub, root / "eval" / f"{sub}_{strategy}", strategy, data, "--ckpt_path", str(ckpt), *RECORD)
             for sub, strategy in (("test", "ddp"), ("test", "fsdp2"), ("predict", "ddp"))]
    plan.append(cli("test", root / "eval" / "test_sharded", "fsdp2", data, *LORA, "--ckpt_path",
                    str(root / "fsdp2" / "full" / "ckpt" / "last.ckpt")))
    llama = ["--config", str(CONFIGS / "backbones" / "llama_tiny.yaml"), *LORA, "--model.schedule", "constant",
             "--model.warmup_steps", "0", "--model.lr", "0.01", "--trainer.max_steps", str(LLAMA_STEPS),
             "--trainer.limit_val_batches", "0", "--checkpoint.monitor", "null"]
    plan += [cli("fit", root / "llama" / strategy, strategy, data, *llama,
                 "--checkpoint.dirpath", str(root / "llama" / strategy / "ckpt")) for strategy in ("ddp", "fsdp2")]
    torchrun(plan)
    for sub in ("test", "predict"):
        main(cli(sub, root / "eval" / f"{sub}_single", None, data, "--ckpt_path", str(ckpt), *RECORD))
    return root, data


def losses(run: Path) -> dict[int, float]:
    """train/loss by global step, from the run's CSV log."""
    rows = [r for f in run.rglob("metrics.csv") for r in csv.DictReader(f.open())]
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def epochs(run: Path) -> set[int]:
    return {int(r["epoch"]) for f in run.rglob("metrics.csv") for r in csv.DictReader(f.open()) if r.get("epoch")}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(CUT))
def test_a_run_cut_mid_epoch_resumes_with_the_same_loss_sequence(runs, strategy):
    root, _ = runs
    full, cut, resumed = (losses(root / strategy / n) for n in ("full", "cut", "cut_resumed"))
    assert sorted(full) == list(range(STEPS)) and sorted(cut) == list(range(CUT[strategy]))
    assert sorted(resumed) == list(range(CUT[strategy], STEPS))
    assert epochs(root / strategy / "full") == {0, 1}  # the runs cross an epoch boundary after the cut
    assert {**cut, **resumed} == pytest.approx(full, rel=1e-6, abs=1e-6)
    if strategy == "fsdp2":  # one shard per process, written by each
        assert sorted(p.name for p in (root / strategy / "cut" / "ckpt" / "last.ckpt").glob("*.distcp")) == [
            "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(CUT))
def test_each_request_is_decoded_once_across_processes(runs, strategy):
    root, _ = runs
    logs = sorted((root / "eval" / f"test_{strategy}").glob("requests.rank*.jsonl"))
    assert len(logs) == 2
    decoded: dict[int, list[int]] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            row = json.loads(line)
            decoded.setdefault(row["stream"], []).extend(row["ids"])
    assert sorted(decoded) == [0, 1]  # seen and unseen templates
    for ids in decoded.values():
        assert sorted(ids) == list(range(USERS))


@pytest.mark.slow
def test_test_metrics_of_one_checkpoint_are_identical_on_one_and_two_processes(runs):
    root, _ = runs
    results = {run: json.loads(next((root / "eval" / f"test_{run}").rglob("results.json")).read_text())
               for run in ("single", "ddp", "fsdp2")}
    single = results["single"]["metrics"]["sequential"]
    assert set(single) >= {"hr@10", "ndcg@10", "unseen/hr@10"}
    assert results["ddp"]["metrics"]["sequential"] == single
    assert results["fsdp2"]["metrics"]["sequential"] == single


@pytest.mark.slow
def test_predictions_on_two_processes_cover_every_request_once(runs):
    root, _ = runs
    lines = {run: Counter(line for f in (root / "eval" / f"predict_{run}").rglob("predictions*.jsonl")
                          for line in f.read_text().splitlines()) for run in ("single", "ddp")}
    assert sum(lines["single"].values()) == 2 * USERS  # seen and unseen template streams, one line per request
    assert lines["ddp"] == lines["single"]
    assert len(list((root / "eval" / "predict_ddp").rglob("predictions.rank1.jsonl"))) == 1


@pytest.mark.slow
def test_a_sharded_fsdp2_checkpoint_is_tested_under_fsdp2(runs):
    root, _ = runs
    results = json.loads(next((root / "eval" / "test_sharded").rglob("results.json")).read_text())
    assert (root / "fsdp2" / "full" / "ckpt" / "last.ckpt" / "meta.pt").is_file()
    assert results["checkpoint"].endswith("last.ckpt")
    rates = {k: v for k, v in results["metrics"]["sequential"].items() if not k.endswith("requests")}
    assert rates and all(0.0 <= v <= 1.0 for v in rates.values())


@pytest.mark.slow
def test_an_hf_llama_with_lora_trains_the_same_under_fsdp2_as_under_ddp(runs):
    root, _ = runs
    ddp, fsdp2 = (losses(root / "llama" / strategy) for strategy in ("ddp", "fsdp2"))
    assert sorted(ddp) == list(range(LLAMA_STEPS))
    assert fsdp2 == pytest.approx(ddp, rel=1e-4)
