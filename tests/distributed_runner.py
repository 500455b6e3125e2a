"""Runs several `recsys-lightning` invocations one after another in the same processes. Started by torchrun, so
every invocation joins one process group and the libraries load once (tests/test_distributed.py)."""

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L

from recsys_lightning.cli import main


class RequestLog(L.Callback):
    """Records which evaluation requests each rank decoded: `requests.rank<r>.jsonl` in the run's root folder."""

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        path = Path(trainer.default_root_dir) / f"requests.rank{trainer.global_rank}.jsonl"
        with path.open("a") as f:
            f.write(json.dumps({"stream": dataloader_idx, "ids": batch["request_id"].tolist()}) + "\n")


if __name__ == "__main__":
    runs = json.loads(sys.argv[1])
    del sys.argv[1:]  # LightningCLI reads its arguments from `args`, not the command line
    for args in runs:
        main(args)
