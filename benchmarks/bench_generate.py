"""Trie-constrained top-k decoding: our beam search against Hugging Face `generate` on the same model and users.

Beauty (S3-Rec split, 12,101 items) is read directly: items are rendered as their ids (one token per digit),
a prompt shows a user's last items, and every item is in the Trie. Both decoders drive the very same random-init
native GLM: ours through the model contract, HF `generate` through `GLMForGenerate` with
`prefix_allowed_tokens_fn` walking the same item sequences (the P5/OpenP5 approach). Beam search semantics
match (`length_penalty=0`, `early_stopping=False`: scores are sums of log-probabilities), so both should
return the same top-k items for every user. The last printed line is one JSON object.

`--item-index semantic` spells every item (in the prompt's history and in the Trie) as its semantic id instead:
L + 1 code tokens (`data.item_index: semantic`, default 3 levels of 256 codes plus the collision level), so the
Trie is L + 2 deep and block positions grow as the item is spelled. The codes are read from `--codes` (the
`semantic_ids.json` that `prepare` leaves in the example cache has the same form), or computed from the Beauty
folder with the MiniLM encoder and written there first (minutes on a CPU).

Only torch, transformers and our generation/model modules are imported (the GPU machine has no other wheels);
computing semantic codes also imports our dataset side (numpy) and the encoder package.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import transformers

from recsys_lightning.generation.beam import trie_beam_search
from recsys_lightning.generation.hf_generate import DictTrie, GLMForGenerate, hf_trie_beam_search
from recsys_lightning.generation.scoring import score_candidates
from recsys_lightning.generation.trie import ItemTrie
from recsys_lightning.model.glm import GLMConfig, GLMModel

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty" / "Beauty.txt"
DEFAULT_CODES = Path(__file__).resolve().parents[1] / ".cache" / "bench_generate" / "beauty_semantic_ids.json"
# GLM's special tokens first (the order of infilling/tokens.py), then digits and the few prompt words.
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "<|endoftext|>", "[MASK]", "[sMASK]", "[gMASK]", "<|startofpiece|>",
            "<|endofpiece|>")
WORDS = (*SPECIALS, *"0123456789", "user", "_", "has", "bought", ",", "what", "next", "?")
VOCAB = {w: i for i, w in enumerate(WORDS)}
PAD, CLS, EOS, MASK, SOP, EOP = (VOCAB[t] for t in ("[PAD]", "[CLS]", "<|endoftext|>", "[MASK]",
                                                     "<|startofpiece|>", "<|endofpiece|>"))
# tiny: the demo's model (2 x 128, its 2,000-token BPE vocabulary); t5-small: a ~55M GLM (12 x 512, T5's vocab).
PRESETS = {
    "tiny": dict(hidden_size=128, num_layers=2, num_attention_heads=4, vocab_size=2000),
    "t5-small": dict(hidden_size=512, num_layers=12, num_attention_heads=8, vocab_size=32128),
}


def digits(n: int) -> list[int]:
    return [VOCAB[c] for c in str(n)]


def load_users(path: Path, users: int, history: int) -> list[tuple[int, list[int]]]:
    """(user id, last `history` items before the held-out one) for the first `users` lines of an S3-Rec file."""
    out = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) < 3:
                raise ValueError(f"{path}:{line_no}: expected 'user item item ...' with at least two items")
            out.append((int(fields[0]), [int(i) for i in fields[1:-1][-history:]]))
            if len(out) == users:
                break
    return out


def num_items(path: Path) -> int:
    """The largest item id of the file (S3-Rec ids run 1..N)."""
    with path.open() as f:
        return max(max(int(i) for i in line.split()[1:]) for line in f)


def semantic_codes(data: Path, codes_file: Path) -> list[list[int]]:
    """Every item's semantic id codes (row i: S3-Rec id i + 1), from `codes_file`, else computed from the dataset
    folder of `data` (default `data.semantic` settings) and written to `codes_file`."""
    if not codes_file.is_file():
        from recsys_lightning.data.adapters import load_dataset
        from recsys_lightning.data.indexing import SemanticIds, semantic_ids

        dataset = load_dataset("s3rec", data.parent, 0)
        if dataset.items != [str(i) for i in range(1, dataset.num_items + 1)]:
            raise SystemExit(f"{data}: item ids are not 1..N, so codes rows cannot follow them")
        built: dict[str, dict] = {}
        semantic_ids(dataset, 0, SemanticIds(), lambda name, build: built.setdefault(name, build()))
        codes_file.parent.mkdir(parents=True, exist_ok=True)
        codes_file.write_text(json.dumps(built["semantic_ids.json"]))
    return json.loads(codes_file.read_text())["codes"]


def code_tokens(codes: list[list[int]]) -> list[list[int]]:
    """Vocabulary ids of each item's codes: level l's code c is the id after `WORDS` and the levels before l."""
    widths = [max(row[level] for row in codes) + 1 for level in range(len(codes[0]))]
    offsets = [len(WORDS) + sum(widths[:level]) for level in range(len(widths))]
    return [[offsets[level] + c for level, c in enumerate(row)] for row in codes]


def prompt(user: int, history: list[int], spell: Callable[[int], list[int]]) -> list[int]:
    """`[CLS] user _ <id> has bought <item> , <item> ... what next ? [MASK] <|endoftext|>`, items as `spell` writes
    their S3-Rec ids."""
    ids = [CLS, VOCAB["user"], VOCAB["_"], *digits(user), VOCAB["has"], VOCAB["bought"]]
    for i, item in enumerate(history):
        ids += ([VOCAB[","]] if i else []) + spell(item)
    return ids + [VOCAB["what"], VOCAB["next"], VOCAB["?"], MASK, EOS]


def batches(users: list[tuple[int, list[int]]], size: int, device: torch.device, spell: Callable[[int], list[int]]
            ) -> list[dict[str, torch.Tensor]]:
    """Right-padded Part A batches with lengths and mask indices."""
    out = []
    for start in range(0, len(users), size):
        rows = [prompt(u, h, spell) for u, h in users[start:start + size]]
        ids = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
        out.append({"input_ids": ids.to(device), "lengths": torch.tensor([len(r) for r in rows], device=device),
                    "mask_index": torch.tensor([r.index(MASK) for r in rows], device=device)})
    return out


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    """Wall-clock seconds of `fn()` (synchronising a GPU) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def profile(name: str, fn: Callable[[], object], device: torch.device, rows: int) -> None:
    """Print where one batch's time goes (torch.profiler, sorted by self time)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"== profile: {name}, one batch ==")
    print(prof.key_averages().table(sort_by=sort, row_limit=rows))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="S3-Rec Beauty.txt")
    p.add_argument("--users", type=int, default=256, help="first N users of the file")
    p.add_argument("--history", type=int, default=20, help="items shown per prompt")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default). 1 by default: on a shared machine a second OpenMP "
                        "thread stalls every op whenever another process holds its core, which swamps the timings")
    p.add_argument("--candidates", type=int, default=100,
                   help="also time exact scoring of this many random candidates per user (direct recommendation)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables for one batch of each")
    p.add_argument("--item-index", choices=("digits", "semantic"), default="digits",
                   help="items as their ids, one token per digit; or as semantic ids (L + 1 code tokens)")
    p.add_argument("--codes", type=Path, default=DEFAULT_CODES,
                   help="semantic ids' codes (JSON {codes: [[...], ...]}, row i = item i + 1); computed when absent")
    return p.parse_args()


class Decoders:
    """The same network behind three timed jobs on a batch: our search, HF `generate`, candidate scoring."""

    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                 sequences: list[list[int]]) -> None:
        sizes = dict(PRESETS[args.model])
        if max(t for seq in sequences for t in seq) >= sizes["vocab_size"]:
            raise SystemExit(f"item tokens do not fit model {args.model}'s {sizes['vocab_size']} vocabulary entries")
        torch.manual_seed(args.seed)
        glm = GLMModel(GLMConfig(max_sequence_length=512, hidden_dropout=0.0, attention_dropout=0.0, **sizes))
        self.glm = glm.eval().to(device=device, dtype=dtype)
        self.hf_model = GLMForGenerate(self.glm, sizes["vocab_size"]).eval()
        self.trie = ItemTrie(sequences, EOP).to(device)
        self.dict_trie = DictTrie(sequences, EOP)
        self.args = args
        self.picks = torch.Generator().manual_seed(args.seed)

    def ours(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return trie_beam_search(self.glm, b["input_ids"], b["lengths"], b["mask_index"], self.trie, SOP,
                                self.args.beam, self.args.top_k)[0]

    def hf(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return hf_trie_beam_search(self.hf_model, self.dict_trie, self.trie.depth, b["input_ids"], b["lengths"],
                                   b["mask_index"], SOP, PAD, self.args.beam, self.args.top_k)

    def score(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Exact log-likelihoods of `--candidates` random items per user."""
        shape = (len(b["input_ids"]), self.args.candidates)
        picks = torch.randint(self.trie.num_items, shape, generator=self.picks).to(b["input_ids"].device)
        return score_candidates(self.glm, b["input_ids"], b["lengths"], b["mask_index"], self.trie.item_tokens[picks],
                                SOP, EOP)


def race(dec: Decoders, data: list[dict[str, torch.Tensor]], repeats: int, device: torch.device
         ) -> tuple[list[float], list[float], torch.Tensor, torch.Tensor]:
    """Seconds per repeat of ours and of HF, and their top-k items; batches alternate between the two so
    load from other processes hits both alike."""
    ours_times, hf_times = [0.0] * repeats, [0.0] * repeats
    for r in range(repeats):
        ours, hf = [], []
        for b in data:
            t, items = timed(lambda: dec.ours(b), device)
            ours_times[r] += t
            ours.append(items.cpu())
            t, items = timed(lambda: dec.hf(b), device)
            hf_times[r] += t
            hf.append(items.cpu())
    return ours_times, hf_times, torch.cat(ours), torch.cat(hf)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def main() -> None:
    args = parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: not found (the S3-Rec Beauty.txt; pass --data)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.item_index == "semantic":
        sequences = code_tokens(semantic_codes(args.data, args.codes))
        if len(sequences) != num_items(args.data):
            raise SystemExit(f"{args.codes}: {len(sequences)} items' codes, {args.data}: {num_items(args.data)} items")
    else:
        sequences = [digits(i) for i in range(1, num_items(args.data) + 1)]  # item index i-1 is S3-Rec id i
    dec = Decoders(args, device, {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype], sequences)
    data = batches(load_users(args.data, args.users, args.history), args.batch_size, device,
                   lambda item: sequences[item - 1])
    dec.ours(data[0]), dec.hf(data[0]), dec.score(data[0])  # warm-up
    if args.profile:
        profile("ours", lambda: dec.ours(data[0]), device, 18)
        profile("hf generate", lambda: dec.hf(data[0]), device, 18)
    ours_times, hf_times, ours_items, hf_items = race(dec, data, args.repeats, device)
    t_score = statistics.median(sum(timed(lambda: dec.score(b), device)[0] for b in data) for _ in range(args.repeats))
    same = (ours_items == hf_items).all(1)
    users = len(ours_items)
    t_ours, t_hf = statistics.median(ours_times), statistics.median(hf_times)
    print(json.dumps({
        "speedup_vs_hf_generate": round(statistics.median(h / o for h, o in zip(hf_times, ours_times)), 2),
        "speedup_per_repeat": [round(h / o, 2) for h, o in zip(hf_times, ours_times)],
        "identical_topk": bool(same.all()),
        "users_identical": int(same.sum()),
        "users": users,
        "ours_users_per_s": round(users / t_ours, 1),
        "hf_users_per_s": round(users / t_hf, 1),
        "ours_ms_per_user": round(1000 * t_ours / users, 3),
        "hf_ms_per_user": round(1000 * t_hf / users, 3),
        "candidates_per_user": args.candidates,
        "scoring_users_per_s": round(users / t_score, 1),
        "beam": args.beam,
        "top_k": args.top_k,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "items_in_trie": dec.trie.num_items,
        "item_index": args.item_index,
        "tokens_per_item": max(len(seq) for seq in sequences),
        "trie_depth": dec.trie.depth,
        "model": args.model,
        "model_parameters": sum(p.numel() for p in dec.glm.parameters()),
        "dtype": args.dtype,
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }))


if __name__ == "__main__":
    main()
