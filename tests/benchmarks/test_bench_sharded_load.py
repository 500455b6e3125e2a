"""benchmarks/bench_sharded_load.py at a tiny size: both ways load the same shards on 2 forked gloo processes, and the
JSON line reports each rank's peak memory and what it holds."""

import json
import sys

from tests.conftest import load_script

bench = load_script("benchmarks/bench_sharded_load.py")


def test_bench_sharded_load_reports_both_ways_per_rank(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_sharded_load.py", "--hidden", "64", "--layers", "2", "--heads", "2",
                                      "--vocab", "1000", "--shard-size", "100KB", "--format", "bin"])
    bench.main()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["format"] == "bin" and result["shard_files"] > 2
    held = result["sharded_held_mb_per_rank"]
    assert held == result["full_held_mb_per_rank"] and len(held) == 2 and sum(held) > 0
    assert all(peak > 0 for mode in ("sharded", "full") for peak in result[f"{mode}_peak_mb_per_rank"])
