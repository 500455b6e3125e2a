"""Peak memory of loading a sharded THUDM checkpoint under FSDP2, on 2 CPU processes (gloo).

Two ways, each in two fresh processes: `sharded`, what `RecSysLLM.configure_model` does under FSDP2 (meta init,
each rank reading from the shard files only the blocks it owns: `NativeGLM.build_sharded`), and `full`, what it did
before (every rank loads the whole checkpoint, then shards: `build`, `add_lora`, `shard_network`). Each rank reports
its peak resident memory above where it started (Linux VmHWM, reset through /proc/self/clear_refs), which counts the
checkpoint pages it reads (safetensors and .bin are memory-mapped) and the tensors it allocates. The checkpoint
(random weights, LoRA r=8 on top, new token rows) is written first, as Hugging Face shards of `--shard-size`.
The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from huggingface_hub import split_torch_state_dict_into_shards
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.distributed.device_mesh import init_device_mesh
from transformers import PreTrainedTokenizerFast

from recsys_lightning.distributed import shard_network
from recsys_lightning.model.backbones import NativeGLM
from recsys_lightning.model.checkpoints import INDEX_FILES, save_glm
from recsys_lightning.model.glm import GLMConfig, GLMModel
from recsys_lightning.model.lora import LoRA
from recsys_lightning.module import RecSysLLM

NEW_TOKENS = 64  # item tokens and GLM special tokens the checkpoint has no rows for


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=30_000)
    p.add_argument("--format", choices=("safetensors", "bin"), default="safetensors")
    p.add_argument("--shard-size", default="100MB", help="largest shard file (Hugging Face's max_shard_size)")
    return p.parse_args()


def write_checkpoint(folder: Path, args: argparse.Namespace) -> int:
    """A random GLM as a sharded THUDM checkpoint (safetensors through `save_glm`, or .bin shards); its bytes."""
    config = GLMConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                       num_attention_heads=args.heads, max_sequence_length=513)
    model = GLMModel(config)
    save_glm(model, folder, max_shard_size=args.shard_size)
    if args.format == "bin":
        for path in folder.glob("model*.safetensors*"):
            path.unlink()
        state = {"glm." + name: t.detach().contiguous() for name, t in model.state_dict().items()}
        split = split_torch_state_dict_into_shards(state, filename_pattern="pytorch_model{suffix}.bin",
                                                   max_shard_size=args.shard_size)
        for file, names in split.filename_to_tensors.items():
            torch.save({name: state[name] for name in names}, folder / file)
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / INDEX_FILES[1]).write_text(json.dumps(index))
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def word_tokenizer(size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of `size` entries: the network is sized by its length."""
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def rank_main(rank: int, port: int, folder: Path, mode: str, vocab: int, out: Path) -> None:
    """Load the checkpoint on this rank as `mode` says; write the peak memory above the start to `out`."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("data_parallel",))
    module = RecSysLLM(backbone=NativeGLM(checkpoint=str(folder), hidden_dropout=0.0, attention_dropout=0.0),
                       lora=LoRA(r=8, dropout=0.0))
    module.tokenizer = word_tokenizer(vocab)
    module._device_mesh = mesh  # what ModelParallelStrategy sets before configure_model
    torch.manual_seed(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    start = peak_rss()
    if mode == "sharded":
        module.configure_model()
    else:
        network = module.backbone.add_lora(module.backbone.build(module.tokenizer), module.lora, module.tokenizer)
        module.network = shard_network(network, mesh)
    held = sum(p.to_local().numel() * p.element_size() for p in module.network.parameters())
    (out / f"{mode}.rank{rank}.json").write_text(json.dumps({"peak": peak_rss() - start, "held": held}))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "glm", Path(tmp)
        size = write_checkpoint(folder, args)
        result = {"checkpoint_mb": round(size / 2**20, 1), "format": args.format,
                  "shard_files": len(list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")))}
        for mode in ("sharded", "full"):
            mp.start_processes(rank_main, args=(free_port(), folder, mode, args.vocab + NEW_TOKENS, out), nprocs=2,
                               start_method="fork")
            ranks = [json.loads((out / f"{mode}.rank{r}.json").read_text()) for r in range(2)]
            result[f"{mode}_peak_mb_per_rank"] = [round(r["peak"] / 2**20, 1) for r in ranks]
            result[f"{mode}_held_mb_per_rank"] = [round(r["held"] / 2**20, 1) for r in ranks]
    result.update(model=dict(hidden=args.hidden, layers=args.layers, vocab=args.vocab), torch=torch.__version__)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
