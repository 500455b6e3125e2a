"""Tokenizers with GLM's special tokens: trained locally from the corpus, or loaded from a backbone folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (AutoTokenizer, BertTokenizer, GPT2Tokenizer, PreTrainedTokenizerBase,
                          PreTrainedTokenizerFast)

from recsys_lightning.infilling.tokens import (CLS, EOP, EOS, GLM_BLANK_TOKENS, GLM_COMMAND_TOKENS, GMASK, MASK, PAD,
                                               SMASK, SOP, SPECIAL_TOKENS, UNK, GLMTokens)


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A BPE tokenizer learned from `corpus`; digits are split one by one so item ids share a small alphabet."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers view of a `tokenizers` object, with GLM's special tokens named."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, cls_token=CLS, eos_token=EOS, mask_token=MASK,
        additional_special_tokens=[SMASK, GMASK, SOP, EOP],
    )


def without_call_settings(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """`tokenizer` with its fast backend's truncation and padding cleared, in place: a `tokenizer.json` may ship
    them (all-MiniLM-L6-v2's pads and cuts every text to 128), and examples are encoded by the backend directly,
    where they would pad each prompt, history and target with [PAD] tokens; lengths are the layout's job."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        _clear_call_settings(backend)
    return tokenizer


def _clear_call_settings(backend: Tokenizer) -> Tokenizer:
    if backend.truncation is not None or backend.padding is not None:
        backend.no_truncation()
        backend.no_padding()
    return backend


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A saved tokenizer (ours, or a backbone's) from a local folder or hub name."""
    tokenizer = without_call_settings(AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code))
    GLMTokens.of(tokenizer)
    return tokenizer


def needs_remote_code(folder: Path) -> bool:
    """True when the folder's tokenizer_config.json maps its tokenizer to the folder's own code (`auto_map`)."""
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        return False
    try:
        return "auto_map" in json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file}: not valid JSON ({err})") from None


def tokenizer_from_files(folder: Path) -> PreTrainedTokenizerBase:
    """A fast tokenizer built from the vocabulary files present, without the folder's own (remote) code.

    tokenizer.json loads as is; GPT-2 BPE (vocab.json + merges.txt, glm-10b) and WordPiece (vocab.txt, glm-large)
    use transformers' GPT-2 and BERT tokenizers, which also read added_tokens.json and the special-token maps.
    """
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return GPT2Tokenizer.from_pretrained(str(folder))
    if (folder / "vocab.txt").is_file():
        return BertTokenizer.from_pretrained(str(folder))
    raise FileNotFoundError(f"{folder}: no tokenizer.json, vocab.json + merges.txt or vocab.txt to build a tokenizer "
                            "from; set trust_remote_code if the folder's own tokenizer code is needed")


def add_glm_tokens(tokenizer: PreTrainedTokenizerBase, order: tuple[str, ...] = GLM_BLANK_TOKENS) -> list[int]:
    """Give `tokenizer` every role and token the blank-infilling layout uses; return the ids it had to add.

    Roles reuse existing tokens first (cls <- [CLS] when present or ordered, else bos; eos <- sep; pad <- eos). Missing tokens are appended:
    those of `order` in that order (THUDM's command-token order gives a GLM vocabulary GLM's ids), then any role
    token still missing.
    """
    vocab = tokenizer.get_vocab()
    eos = tokenizer.eos_token or tokenizer.sep_token or EOS
    roles = {"eos_token": eos, "pad_token": tokenizer.pad_token or eos, "mask_token": tokenizer.mask_token or MASK,
             "cls_token": tokenizer.cls_token or (CLS if CLS in vocab or CLS in order else tokenizer.bos_token) or CLS}
    ordered = [*order, *sorted(set(roles.values()) - set(order))]
    missing = [t for t in ordered if t not in vocab]
    before = len(tokenizer)
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    for role, token in roles.items():
        setattr(tokenizer, role, token)
    return list(range(before, len(tokenizer)))


def load_backbone_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A pretrained backbone's tokenizer (local folder or hub name) with GLM's special tokens added when missing.

    A folder whose tokenizer is remote code (THUDM's GLM ports) is read from its vocabulary files unless
    `trust_remote_code` is set.
    """
    folder = Path(path)
    if folder.is_dir() and not trust_remote_code and needs_remote_code(folder):
        tokenizer = tokenizer_from_files(folder)
        add_glm_tokens(tokenizer, GLM_COMMAND_TOKENS)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        add_glm_tokens(tokenizer, GLM_BLANK_TOKENS)
    GLMTokens.of(without_call_settings(tokenizer))
    return tokenizer


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """What checkpoints and caches compare: a fast tokenizer's serialized form without its truncation and padding
    settings (see `without_call_settings`; checkpoints saved before it was applied on load have them), else its
    name or path."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return str(tokenizer.name_or_path)
    if backend.truncation is None and backend.padding is None:
        return backend.to_str()
    return _clear_call_settings(Tokenizer.from_str(backend.to_str())).to_str()
