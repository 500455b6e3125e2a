"""Loading a sharded THUDM checkpoint under FSDP2 without any rank holding the full model: two gloo processes (forked
from this one, so the libraries are loaded once; one launch for every case) load .safetensors and .bin shards through
`RecSysLLM.configure_model`; their logits and weights equal one process's full load, and each reads about half the
checkpoint's bytes."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

from recsys_lightning.infilling.layout import Blank, blank_infilling_mask, collate_infill, infill
from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.model import checkpoints
from recsys_lightning.model.backbones import NativeGLM
from recsys_lightning.model.checkpoints import load_blocks, weight_files
from recsys_lightning.model.lora import LoRA
from recsys_lightning.model.sharded import local_block
from recsys_lightning.module import RecSysLLM
from tests.conftest import make_glm
from tests.model.conftest import write_glm_tokenizer_config, write_gpt2_vocab, write_thudm_checkpoint

SEED = 7
ITEMS = [f"<item_{i}>" for i in range(7)]  # item tokens the data module would add
CASES = {"safetensors": ("safetensors", 3, "float32"), "bin": ("bin", 2, "bfloat16")}  # format, shards, dtype
NEW_GLM_TOKENS = 5  # GLM special tokens the checkpoint has no rows for, resized into the embedding with the items
OLD_TOKENS = [3, 200]  # tokens with checkpoint rows whose rows LoRA trains too (rank 0's and rank 1's rows)


def checkpoint(folder: Path, fmt: str, shards: int) -> dict[str, torch.Tensor]:
    """A sharded THUDM checkpoint with its tokenizer files; returns its weights."""
    write_gpt2_vocab(folder)
    write_glm_tokenizer_config(folder)
    vocab = len(recsys(folder, "float32").tokenizer) - len(ITEMS) - NEW_GLM_TOKENS
    model = make_glm(vocab, seed=3)
    write_thudm_checkpoint(folder, model, fmt, shards)
    return model.state_dict()


def recsys(folder: Path, dtype: str) -> RecSysLLM:
    """The module to load: the checkpoint's GLM with its tokenizer, item tokens added, and LoRA that also trains the
    rows of the new tokens and of two the checkpoint has (`OLD_TOKENS`)."""
    backbone = NativeGLM(checkpoint=str(folder), dtype=dtype, hidden_dropout=0.0, attention_dropout=0.0)
    tokenizer = backbone.tokenizer()
    tokenizer.add_tokens(ITEMS)
    new = range(len(tokenizer) - len(ITEMS) - NEW_GLM_TOKENS, len(tokenizer))
    lora = LoRA(r=2, dropout=0.0, trainable_token_indices={"word_embeddings": [*OLD_TOKENS, *new]})
    module = RecSysLLM(backbone=backbone, lora=lora)
    module.tokenizer = tokenizer
    return module


def configure(module: RecSysLLM) -> None:
    """Build the network from the same random state in every process (LoRA and new token rows are drawn)."""
    torch.manual_seed(SEED)
    module.configure_model()


def logits(module: RecSysLLM) -> torch.Tensor:
    """Logits of a Part A/B row that holds new GLM tokens and item tokens (rows the checkpoint lacks), on one thread:
    the same float sums, in the same order, in every process."""
    tokens = GLMTokens.of(module.tokenizer)
    items = module.tokenizer.convert_tokens_to_ids(ITEMS)
    part_a = [tokens.cls, 5, 6, items[0], 7, min(tokens.masks), tokens.eos]
    batch = collate_infill([infill(part_a, [Blank(len(part_a) - 2, [items[3], items[5]])], tokens)], tokens.pad)
    mask = blank_infilling_mask(batch["segment_ids"], batch["part_a"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return module.network(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                  attention_mask=mask).logits.float()
    finally:
        torch.set_num_threads(threads)


def count_reads(reads: list[int]) -> None:
    """Record the bytes of every block the loader reads from a weight file, and of every whole file (in this
    process)."""
    read_weights = checkpoints.read_weights

    def read_file(path: Path) -> dict[str, torch.Tensor]:
        tensors = read_weights(path)
        reads.extend(t.numel() * t.element_size() for t in tensors.values())
        return tensors

    checkpoints.read_weights = read_file
    for kind in (checkpoints.SafetensorsFile, checkpoints.PickleFile):
        def read(self: Any, key: str, index: Any, _read=kind.read) -> torch.Tensor:
            block = _read(self, key, index)
            reads.append(block.numel() * block.element_size())
            return block

        kind.read = read


def rank_main(rank: int, port: int, cases: list[dict[str, Any]]) -> None:
    """One FSDP2 rank: load each case through `configure_model`, save logits, local shards and bytes read."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("data_parallel",))
    reads: list[int] = []
    count_reads(reads)
    for case in cases:
        reads.clear()
        module = recsys(case["folder"], case["dtype"])
        module._device_mesh = mesh  # what ModelParallelStrategy sets before configure_model
        configure(module)
        shards = {}
        for name, tensor in {**dict(module.network.named_parameters()), **dict(module.network.named_buffers())}.items():
            local, index = local_block(tensor)
            shards[name] = (index[0].start, local.detach().clone(), local is not tensor)  # sharded, or replicated
        torch.save({"logits": logits(module), "shards": shards, "reads": list(reads)}, case["out"] / f"rank{rank}.pt")
    dist.destroy_process_group()


def launch(cases: list[dict[str, Any]]) -> None:
    """`rank_main` on two processes forked from this one (gloo over TCP on a free port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(rank_main, args=(port, cases), nprocs=2, start_method="fork")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, dict]:
    """Per format: the checkpoint's bytes, one process's full load, and what each of the two FSDP2 ranks saved."""
    root = tmp_path_factory.mktemp("sharded_load")
    cases, results = [], {}
    for name, (fmt, shards, dtype) in CASES.items():
        folder, out = root / name, root / f"{name}_out"
        out.mkdir()
        weights = checkpoint(folder, fmt, shards)
        single = recsys(folder, dtype)
        configure(single)
        results[name] = {"weights": weights, "single": single, "logits": logits(single)}
        cases.append({"folder": folder, "dtype": dtype, "out": out})
    launch(cases)
    for case, name in zip(cases, CASES):
        results[name]["ranks"] = [torch.load(case["out"] / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return results


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_fsdp2_loaded_logits_equal_one_process_load(loaded, fmt):
    reference = loaded[fmt]["logits"]
    for rank in loaded[fmt]["ranks"]:
        assert torch.equal(rank["logits"], reference)


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_fsdp2_shards_are_the_one_process_weights_lora_and_new_token_rows_included(loaded, fmt):
    single = loaded[fmt]["single"].network
    state = {**dict(single.named_parameters()), **dict(single.named_buffers())}
    ranks = [r["shards"] for r in loaded[fmt]["ranks"]]
    assert set(ranks[0]) == set(ranks[1]) == set(state)
    assert any("lora_A" in n for n in state) and any("trainable_tokens_delta" in n for n in state)
    for name, full in state.items():
        (first, a, sharded), (second, b, _) = ranks[0][name], ranks[1][name]
        assert first == second == 0 or (first, second) == (0, len(a)), name  # dim-0 shards, rank 0's first
        held = torch.cat([a, b]) if sharded else a
        assert held.dtype == full.dtype and torch.equal(held, full.detach()) and (sharded or torch.equal(b, a)), name
    assert sum(s for _, _, s in ranks[0].values()) == len(list(single.parameters()))  # FSDP2 shards parameters


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_no_rank_reads_or_holds_the_full_model(loaded, fmt):
    """Each rank reads each checkpoint tensor's rows it owns and the old trainable tokens' rows, nothing else: the two
    ranks' reads add up to the checkpoint (no byte read twice) and each is half of it, give or take what dim-0 chunking
    puts on rank 0 (half a row of every tensor, and half the embedding's new token rows, which rank 1 holds more of
    instead of reading)."""
    weights, ranks = loaded[fmt]["weights"], loaded[fmt]["ranks"]
    full = sum(t.numel() * t.element_size() for t in weights.values())
    read = [sum(r["reads"]) for r in ranks]
    row = {name: t.numel() // t.shape[0] * t.element_size() for name, t in weights.items()}
    margin = sum(row.values()) / 2 + (len(ITEMS) + NEW_GLM_TOKENS) * row["word_embeddings.weight"] / 2
    tokens = len(OLD_TOKENS) * row["word_embeddings.weight"]  # every rank reads the trainable old tokens' rows
    assert sum(read) == full + 2 * tokens
    assert all(abs(r - tokens - full / 2) <= margin for r in read), (read, full, margin)
    assert margin < full / 10  # the bound says something: a full copy on one rank would break it
    single = loaded[fmt]["single"].network
    total = sum(t.numel() * t.element_size() for t in [*single.parameters(), *single.buffers()])
    for rank in ranks:  # and what each rank holds after loading is its half of the network
        held = sum(t.numel() * t.element_size() for _, t, _ in rank["shards"].values())
        assert abs(held - total / 2) <= total / 20, (held, total)


def test_a_block_read_copies_just_that_block_and_checks_shapes(tmp_path):
    folder = write_thudm_checkpoint(tmp_path / "glm", make_glm(50), "safetensors", 2)
    expected = {n: p.shape for n, p in make_glm(50).state_dict().items()}
    out = torch.empty(3, 32)
    load_blocks(folder, expected, {"word_embeddings.weight": [((slice(4, 7), slice(0, 32)), out)]})
    assert torch.equal(out, make_glm(50).word_embeddings.weight[4:7])
    with pytest.raises(ValueError, match="'word_embeddings.weight' has shape"):
        load_blocks(folder, {**expected, "word_embeddings.weight": torch.Size((51, 32))}, {})
    assert len(weight_files(folder)) == 2
