"""SIGKILL and resume with dropout: a fit killed at several points (between steps, mid-step, in the middle of writing a
checkpoint) and resumed from `last.ckpt` each time logs the same per-step losses, bit for bit, as an uninterrupted
fit, on one process and on two DDP processes (gloo). The runs kill themselves (KillAt) so the points are exact; each
launch is a fresh process (tests/distributed_runner.py, under torchrun for DDP), as after a real kill."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from recsys_lightning.checkpoint_io import AtomicCheckpointIO, atomic_write
from tests.conftest import REPO, write_reviews
from tests.test_distributed import USERS, cli, losses

STEPS = 12  # validation after steps 4, 8 and 12; the 41 users' unpacked rows make epochs of a few steps
DROPOUT = ["--model.backbone.init_args.hidden_dropout", "0.1", "--model.backbone.init_args.attention_dropout", "0.1"]


class KillAt(L.Callback):
    """SIGKILLs its process at global step `step`: before the step (`batch_start`), after its forward (`backward`),
    or half-way through writing the checkpoint of that step (`write`, on the rank that writes)."""

    def __init__(self, at: str, step: int) -> None:
        self.at, self.step = at, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.at == "batch_start" and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_before_backward(self, trainer, pl_module, loss):
        if self.at == "backward" and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def setup(self, trainer, pl_module, stage):
        checkpoint_io = trainer.strategy.checkpoint_io
        assert isinstance(checkpoint_io, AtomicCheckpointIO)
        save = checkpoint_io.save_checkpoint

        def save_or_die(checkpoint, path, storage_options=None):
            if self.at == "write" and checkpoint["global_step"] == self.step:
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)

                def half_then_die(f):
                    f.write(buffer.getvalue()[:buffer.tell() // 2])
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)

                atomic_write(path, half_then_die)
            save(checkpoint, path, storage_options)

        checkpoint_io.save_checkpoint = save_or_die


def kill(at: str, step: int) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": "tests.test_resume.KillAt",
                                                 "init_args": {"at": at, "step": step}})


def fit(root: Path, data: Path, strategy: str | None, name: str, *extra: str) -> list[str]:
    """A fit with dropout logging every step under root/<name>; `full` checkpoints apart, the others share one folder."""
    return cli("fit", root / name, strategy, data, *DROPOUT, "--trainer.max_steps", str(STEPS),
               "--checkpoint.dirpath", str(root / ("full" if name == "full" else "cut") / "ckpt"),
               "--checkpoint.every_n_train_steps", "1", "--trainer.val_check_interval", "4",
               "--trainer.check_val_every_n_epoch", "null", "--trainer.limit_val_batches", "1",
               "--trainer.logger", json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {
                   "save_dir": str(root / name), "flush_logs_every_n_steps": 1}}), *extra)


def resume(root: Path, data: Path, strategy: str | None, name: str, *extra: str) -> list[str]:
    return fit(root, data, strategy, name, "--ckpt_path", str(root / "cut" / "ckpt" / "last.ckpt"), *extra)


def launch(runs: list[list[str]], processes: int, killed: bool) -> None:
    """Run CLI invocations one after another in fresh processes (torchrun for two), without the distributed
    variables a test process may carry (PITFALLS.md); `killed`: the last one SIGKILLs itself."""
    leaked = ("MASTER_", "PL_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK", "TORCHELASTIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(leaked)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    runner = [str(REPO / "tests" / "distributed_runner.py"), json.dumps(runs)]
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        runner = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port),
                  *runner]
    done = subprocess.run([sys.executable, *runner], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    died = done.returncode == -signal.SIGKILL or bool(re.search(r"exitcode\s*:\s*-9", done.stderr))
    if (done.returncode != 0, died) != (killed, killed):
        pytest.fail(f"launch ended with {done.returncode} (expected {'SIGKILL' if killed else 0}):\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}")


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def saved_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
def test_a_fit_killed_three_times_resumes_to_the_same_losses_with_dropout(tmp_path):
    data = write_reviews(tmp_path / "reviews", users=USERS)
    ckpt = tmp_path / "cut" / "ckpt"
    # killed before step 3 (last.ckpt at 3), then after step 6's forward (at 6), then half-way through writing
    # step 9's checkpoint (last.ckpt stays at 8, a temp file is left), then resumed to the end
    launch([fit(tmp_path, data, None, "full"), fit(tmp_path, data, None, "cut", kill("batch_start", 3))], 1, True)
    assert saved_step(ckpt / "last.ckpt") == 3
    launch([resume(tmp_path, data, None, "resumed1", kill("backward", 6))], 1, True)
    assert saved_step(ckpt / "last.ckpt") == 6
    launch([resume(tmp_path, data, None, "resumed2", kill("write", 9))], 1, True)
    assert saved_step(ckpt / "last.ckpt") == 8 and len(temp_files(ckpt)) == 1
    launch([resume(tmp_path, data, None, "resumed3")], 1, False)
    assert temp_files(ckpt) == []  # the killed write's temp file went with the next write

    full = losses(tmp_path / "full")
    segments = [losses(tmp_path / name) for name in ("cut", "resumed1", "resumed2", "resumed3")]
    assert sorted(full) == list(range(STEPS))
    assert [sorted(s) for s in segments] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9, 10, 11]]
    assert {step: loss for s in segments for step, loss in s.items()} == full  # bit-identical


@pytest.mark.slow
def test_a_ddp_fit_killed_mid_checkpoint_resumes_to_the_same_losses_with_dropout(tmp_path):
    data = write_reviews(tmp_path / "reviews", users=USERS)
    ckpt = tmp_path / "cut" / "ckpt"
    launch([fit(tmp_path, data, "ddp", "full"), fit(tmp_path, data, "ddp", "cut", kill("write", 6))], 2, True)
    assert saved_step(ckpt / "last.ckpt") == 5 and len(temp_files(ckpt)) == 1
    saved = torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=True)["callbacks"]["TrainingRandomState"]
    assert len(saved["ranks"]) == 2 and not torch.equal(saved["ranks"][0]["torch"], saved["ranks"][1]["torch"])
    launch([resume(tmp_path, data, "ddp", "resumed")], 2, False)
    full, cut, resumed = (losses(tmp_path / name) for name in ("full", "cut", "resumed"))
    assert sorted(full) == list(range(STEPS)) and sorted(cut) == list(range(5))
    assert sorted(resumed) == list(range(5, STEPS))
    assert {**cut, **resumed} == full  # rank 0's losses; rank 1's dropout reaches them through the gradients
