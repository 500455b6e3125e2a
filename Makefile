PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean bench bench-generate bench-train bench-serve bench-scale

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Train on the bundled demo data (afresh), test the best checkpoint and print the metrics table, then export it as a
# self-contained folder that `Recommender.from_pretrained` and `recsys-lightning serve` read without the dataset.
demo: install
	rm -rf runs/demo  # a fresh demo run: fit keeps an earlier run's checkpoints and would stop
	$(BIN)/recsys-lightning fit --config lightning_configs/demo.yaml
	$(BIN)/recsys-lightning test --config lightning_configs/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt
	$(BIN)/recsys-lightning export --ckpt_path runs/demo/checkpoints/best.ckpt --out runs/demo/export

test: install
	$(BIN)/pytest -q

# Trie-constrained top-k decoding on Beauty: our beam search vs Hugging Face generate (same model, same users), with
# items as digit ids, then as semantic ids (4 code tokens; codes computed once into .cache/bench_generate/): one JSON
# line each, the semantic one last.
bench-generate: install
	$(BIN)/python benchmarks/bench_generate.py $(BENCH_GENERATE_ARGS)
	$(BIN)/python benchmarks/bench_generate.py --item-index semantic $(BENCH_GENERATE_ARGS)

# Training throughput on this machine: our packed GLM step vs a causal-SDPA reference of the same size (JSON last
# line: tokens/s, padding fraction, MFU, ratio). One GPU at GLM-Large size: benchmarks/gpu_train.sh
bench-train: install
	$(BIN)/python benchmarks/bench_train.py $(BENCH_TRAIN_ARGS)

# LoRA training at scale, here the cpu-small preset (native GLM and Llama in GLM mode at 2 x 64, meta-built, bf16): per
# model and config (checkpointing on/off x row length) one JSON line: tokens/s, MFU of LoRA's FLOPs, peak memory, ratio
# to a causal reference with the same LoRA. GLM-10B and Llama-7B shapes on one GPU: benchmarks/gpu_scale.sh
bench-scale: install
	$(BIN)/python benchmarks/bench_scale.py $(BENCH_SCALE_ARGS)

# Serving: `recsys-lightning serve` (LitServe) answering POST /recommend from 1, 8 and 32 concurrent clients: requests/s
# and p50/p99 latency (JSON last line). It fits a demo-size model first unless BENCH_SERVE_ARGS="--model DIR".
bench-serve: install
	$(BIN)/python benchmarks/bench_serve.py $(BENCH_SERVE_ARGS)

# Every benchmark; each prints one JSON object as its last line.
bench: bench-generate bench-train bench-serve

clean:
	rm -rf $(VENV) runs .cache
