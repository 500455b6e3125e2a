import json
import random
import subprocess
import sys

from tests.conftest import REPO

RUNNER = """
import json, runpy, sys
sys.argv = ["bench_generate.py", *sys.argv[1:]]
runpy.run_path("benchmarks/bench_generate.py", run_name="__main__")
print(json.dumps(sorted({"datasets", "jsonargparse", "lightning", "pytorch_lightning"} & set(sys.modules))))
"""


def test_bench_generate_agrees_with_hf_and_imports_only_torch_transformers_and_ours(tmp_path):
    rng = random.Random(0)
    data = tmp_path / "Tiny.txt"
    lines = [[u] + [rng.randint(1, 300) for _ in range(rng.randint(3, 12))] for u in range(1, 9)]
    data.write_text("".join(" ".join(map(str, line)) + "\n" for line in lines))
    out = subprocess.run([sys.executable, "-c", RUNNER, "--data", str(data), "--users", "8", "--batch-size", "4",
                          "--repeats", "1", "--beam", "6", "--top-k", "4"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    *_, result, forbidden = out.stdout.strip().splitlines()
    result = json.loads(result)
    assert json.loads(forbidden) == []
    assert result["identical_topk"] and result["users"] == 8
    assert result["items_in_trie"] == max(max(line[1:]) for line in lines)
    assert result["speedup_vs_hf_generate"] > 0 and result["beam"] == 6


def test_bench_generate_semantic_ids_case_decodes_codes_l_plus_one_deep_and_agrees_with_hf(tmp_path):
    rng = random.Random(1)
    data = tmp_path / "Tiny.txt"
    lines = [[u] + [rng.randint(1, 120) for _ in range(rng.randint(3, 12))] for u in range(1, 9)]
    data.write_text("".join(" ".join(map(str, line)) + "\n" for line in lines))
    items = max(max(line[1:]) for line in lines)
    prefixes = [[rng.randrange(4), rng.randrange(4), rng.randrange(3)] for _ in range(items)]
    codes = [p + [prefixes[:i].count(p)] for i, p in enumerate(prefixes)]  # the collision level keeps them unique
    codes_file = tmp_path / "codes.json"
    codes_file.write_text(json.dumps({"codes": codes}))
    out = subprocess.run([sys.executable, "-c", RUNNER, "--data", str(data), "--users", "8", "--batch-size", "4",
                          "--repeats", "1", "--beam", "20", "--top-k", "10", "--item-index", "semantic",
                          "--codes", str(codes_file)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    *_, result, forbidden = out.stdout.strip().splitlines()
    result = json.loads(result)
    assert json.loads(forbidden) == []
    assert result["item_index"] == "semantic" and result["tokens_per_item"] == 4 and result["trie_depth"] == 5
    assert result["identical_topk"] and result["users"] == 8 and result["items_in_trie"] == items
