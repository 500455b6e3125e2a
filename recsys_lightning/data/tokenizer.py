"""Tokenizers with GLM's special tokens: trained locally from the corpus, or loaded from a backbone folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, UNK, CLS, EOS = "[PAD]", "[UNK]", "[CLS]", "<|endoftext|>"
MASK, SMASK, GMASK, SOP, EOP = "[MASK]", "[sMASK]", "[gMASK]", "<|startofpiece|>", "<|endofpiece|>"
SPECIAL_TOKENS = (PAD, UNK, CLS, EOS, MASK, SMASK, GMASK, SOP, EOP)


@dataclass(frozen=True)
class GLMTokens:
    """Ids of the tokens the blank-infilling layout needs, resolved once from a tokenizer."""

    pad: int
    cls: int
    eos: int
    sop: int
    eop: int
    masks: frozenset[int]

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> GLMTokens:
        vocab = tokenizer.get_vocab()
        missing = [t for t in (PAD, CLS, EOS, MASK, SOP, EOP) if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} lacks GLM special tokens {missing}")
        return cls(vocab[PAD], vocab[CLS], vocab[EOS], vocab[SOP], vocab[EOP],
                   frozenset(vocab[t] for t in (MASK, SMASK, GMASK) if t in vocab))


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


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A saved tokenizer (ours, or a backbone's) from a local folder or hub name."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    GLMTokens.of(tokenizer)
    return tokenizer
