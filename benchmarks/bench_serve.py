"""Serving throughput and latency: `recsys-lightning serve` (LitServe, /recommend batched) answering POST /recommend
over loopback HTTP from 1, 8 and 32 concurrent clients (asyncio + httpx), each request for the next of the model's
users in turn.

    python benchmarks/bench_serve.py [--model runs/demo/export] [--requests 400] [--concurrency 1 8 32]

Without --model it fits a model of the demo's size (sequential family only, --steps steps) on the bundled demo data
and exports it to a temporary folder. Per level: --warmup requests first, then --requests requests timed; prints
requests/s and p50/p99 latency per level, and one JSON object as the last line. Client and server share the
machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import httpx
import numpy as np

from recsys_lightning.builtin import builtin_dir
from recsys_lightning.cli import main as cli
from recsys_lightning.recommender import Recommender
from recsys_lightning.serve import running_server


def fit_and_export(folder: Path, steps: int, root: Path | None = None) -> Path:
    """A demo-size model (sequential family only) fit for `steps` steps on the demo data (or `root`), exported."""
    tasks = json.dumps([{"name": "sequential", "options": {"max_history": 10}, "max_eval_requests": 100}])
    cli(["fit", "--config", str(builtin_dir("lightning_configs") / "demo.yaml"), "--data.tasks", tasks,
         "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
         "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
         *(["--data.root", str(root)] if root else []), "--trainer.default_root_dir", str(folder),
         "--trainer.logger.init_args.save_dir", str(folder / "logs"), "--data.cache_dir", str(folder / "cache"),
         "--checkpoint.dirpath", str(folder / "ckpt")])
    cli(["export", "--ckpt_path", str(folder / "ckpt" / "last.ckpt"), "--out", str(folder / "export")])
    return folder / "export"


async def run_level(client: httpx.AsyncClient, url: str, users: Sequence[str], concurrency: int, requests: int,
                    k: int) -> dict[str, Any]:
    """`requests` POST /recommend from `concurrency` clients at once: requests/s, p50/p99 latency, non-200 count."""
    latencies: list[float] = []
    errors = 0
    sent = 0

    async def one_client() -> None:
        nonlocal errors, sent
        while sent < requests:
            user = users[sent % len(users)]
            sent += 1
            start = time.perf_counter()
            answer = await client.post(url, json={"user": user, "k": k})
            latencies.append(time.perf_counter() - start)
            errors += answer.status_code != 200

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "requests": requests, "requests_per_s": round(requests / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "errors": errors}


async def measure(url: str, users: Sequence[str], levels: Sequence[int], requests: int, warmup: int, k: int
                  ) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        results = []
        for concurrency in levels:
            await run_level(client, url, users, concurrency, warmup, k)  # warm-up: connections, caches, batches
            result = await run_level(client, url, users, concurrency, requests, k)
            print(f"concurrency {concurrency:>3}: {result['requests_per_s']:8.1f} requests/s, "
                  f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, {result['errors']} errors",
                  flush=True)
            results.append(result)
        return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an export folder; default: fit and export one on the demo data")
    parser.add_argument("--data-root", type=Path, help="data to fit on instead of the bundled demo data")
    parser.add_argument("--steps", type=int, default=100, help="training steps of the fitted model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=400, help="timed requests per concurrency level")
    parser.add_argument("--warmup", type=int, default=40, help="untimed requests before each level")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max_batch_size", type=int, default=8)
    parser.add_argument("--batch_timeout", type=float, default=0.005)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu", choices=("auto", "cpu", "cuda"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        model = args.model or fit_and_export(Path(tmp), args.steps, args.data_root)
        users = Recommender.from_pretrained(model).users
        options = ["--endpoints", "recommend", "--max_batch_size", str(args.max_batch_size), "--batch_timeout",
                   str(args.batch_timeout), "--workers", str(args.workers), "--accelerator", args.accelerator,
                   "--log_level", "warning"]
        with running_server(model, *options, log=Path(tmp) / "server.log") as server:
            levels = asyncio.run(measure(f"{server.url}/recommend", users, args.concurrency, args.requests,
                                         args.warmup, args.k))
    result = {"bench": "serve", "endpoint": "/recommend", "model": str(args.model or "demo data, fitted"),
              "k": args.k, "max_batch_size": args.max_batch_size, "batch_timeout_s": args.batch_timeout,
              "workers": args.workers, "accelerator": args.accelerator, "cpus": os.cpu_count(), "levels": levels}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
