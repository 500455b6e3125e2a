"""The serving bench end to end at tiny request counts: it fits and exports a model, serves it, and prints one JSON
object of every concurrency level last (its numbers are measured, not checked)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_script

bench = load_script("benchmarks/bench_serve.py")


@pytest.mark.slow  # fits a model and starts a server
def test_bench_serve_prints_requests_per_second_and_latency_of_every_level_last(tiny_reviews, capsys):
    result = bench.main(["--data-root", str(tiny_reviews), "--steps", "2", "--requests", "3", "--warmup", "1",
                         "--concurrency", "1", "2", "--k", "5"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert (result["endpoint"], result["k"]) == ("/recommend", 5)
    assert [level["concurrency"] for level in result["levels"]] == [1, 2]
    for level in result["levels"]:
        assert (level["requests"], level["errors"]) == (3, 0)
        assert level["requests_per_s"] > 0 and 0 < level["p50_ms"] <= level["p99_ms"]
