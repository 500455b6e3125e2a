"""The scale bench: its LoRA FLOP count against a hand count, meta-init then materialise, and its CPU preset's lines."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import load_script

bench = load_script("benchmarks/bench_scale.py")

SPECS = {spec.kind: spec for spec in bench.PRESETS["cpu-small"].models}
CPU = torch.device("cpu")


def test_glm_lora_flops_per_token_match_a_hand_count():
    layers, d, vocab, r, seq = 2, 64, 512, 8, 128
    _, count = bench.build_ours(SPECS["glm"], CPU)
    frozen = layers * (3 * d * d + d * d + 4 * d * d + 4 * d * d)  # query_key_value, dense, h_to_4h, 4h_to_h
    lora = layers * r * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))  # A (r x in) + B (out x r) each
    assert count.per_token(seq) == 4 * frozen + 6 * lora + 12 * layers * d * seq
    assert count.per_predicted() == 4 * vocab * d  # the tied output layer is frozen: no weight gradient
    assert count.flops(10, 3, seq) == 10 * count.per_token(seq) + 3 * count.per_predicted()


def test_llama_lora_flops_per_token_match_a_hand_count():
    layers, d, inner, vocab, r, seq = 2, 64, 172, 512, 8, 64
    _, count = bench.build_ours(SPECS["llama"], CPU)
    frozen = layers * (4 * d * d + 3 * d * inner)  # q, k, v, o; gate, up, down
    lora = layers * r * (4 * (d + d) + 2 * (d + inner) + (inner + d))
    assert count.per_token(seq) == 4 * frozen + 6 * lora + 12 * layers * d * seq
    assert count.per_predicted() == 4 * vocab * d


@pytest.mark.parametrize("kind", ["glm", "llama"])
def test_the_reference_counts_the_same_flops_per_token_as_ours(kind):
    assert bench.build_reference(SPECS[kind], CPU, 128)[1] == bench.build_ours(SPECS[kind], CPU)[1]


@pytest.mark.parametrize("kind", ["glm", "llama"])
def test_meta_init_materialises_finite_bf16_weights_and_only_adapters_train(kind):
    network, _ = bench.build_ours(SPECS[kind], CPU)
    params = dict(network.named_parameters())
    assert not any(p.is_meta for p in params.values()) and all(bool(p.isfinite().all()) for p in params.values())
    assert all(p.float().std() > 0 for name, p in params.items() if name.endswith("lora_A.default.weight"))
    norms = [p for name, p in params.items() if "norm" in name and name.endswith("weight")]
    assert len(norms) == 5 and all(bool((p == 1).all()) for p in norms)  # 2 per block and the final one, at 1
    built = dict(bench.backbone(SPECS[kind]).build(bench.Vocabulary(512)).named_buffers())  # not on meta
    buffers = {name.rsplit("model.", 1)[-1]: b for name, b in network.named_buffers()}
    assert buffers.keys() == {name.rsplit("model.", 1)[-1] for name in built}
    assert all(torch.equal(buffers[name.rsplit("model.", 1)[-1]], b) for name, b in built.items())  # rotary
    trained = bench.trainable(network)
    own = [name for name in trained if "lora_" not in name]
    assert own == ([] if kind == "glm" else ["block_position_embeddings.weight"])  # GLM mode's added table
    assert len(trained) - len(own) == 2 * 2 * (4 if kind == "glm" else 7)  # A and B, 2 layers, each projection
    assert {p.dtype for name, p in params.items() if "lora_" not in name and name not in own} == {torch.bfloat16}
    assert {params[name].dtype for name in trained} == {torch.float32}  # peft keeps adapters in fp32


@pytest.fixture
def one_thread():
    """Tiny bf16 ops on a shared CPU: one thread, not two spinning against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_cpu_preset_prints_one_line_per_model_with_lora_mfu(tmp_path, capsys, one_thread):
    out = tmp_path / "scale.jsonl"
    lines = bench.main(["--preset", "cpu-small", "--seq", "64", "--checkpointing", "on", "--out", str(out)])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed == lines == [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["model"] for line in lines] == ["native GLM 2 x 64", "llama 2 x 64 in GLM mode"]
    for line, spec in zip(lines, SPECS.values()):
        assert line["rows"] == [4, 64] and line["checkpointing"] is True and line["recompute_counted"] is False
        assert line["tokens_per_s"] > 0 and line["reference_tokens_per_s"] > 0 and line["peak_memory_gib"] > 0
        assert line["ratio"] == pytest.approx(line["tokens_per_s"] / line["reference_tokens_per_s"], rel=0.01)
        count = bench.build_ours(spec, CPU)[1]
        assert line["flops_per_token"] == count.per_token(64)
        assert line["flops_per_predicted_token"] == count.per_predicted()
        peak = line["peak_tflops"] * 1e12  # ours predicts Part B tokens only, the reference every token of its rows
        assert line["tokens_per_s"] * count.per_token(64) <= line["mfu"] * peak * 1.01
        assert line["mfu"] * peak <= line["tokens_per_s"] * (count.per_token(64) + count.per_predicted()) * 1.01
        assert line["reference_mfu"] * peak == pytest.approx(
            line["reference_tokens_per_s"] * (count.per_token(64) + count.per_predicted()), rel=0.01)
        assert line["trainable_parameters"] < line["parameters"] / 5
