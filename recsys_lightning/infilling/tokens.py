"""GLM's special tokens and the ids of those the blank-infilling layout writes: the format's vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

PAD, UNK, CLS, EOS = "[PAD]", "[UNK]", "[CLS]", "<|endoftext|>"
MASK, SMASK, GMASK, SOP, EOP = "[MASK]", "[sMASK]", "[gMASK]", "<|startofpiece|>", "<|endofpiece|>"
SEP = "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, CLS, EOS, MASK, SMASK, GMASK, SOP, EOP)
# THUDM GLM appends its command tokens to a base vocabulary in this order (GPT-2 BPE: 50257..50264;
# WordPiece already holds [CLS], [MASK], [SEP], [UNK]); adding the missing ones in the same order keeps their ids.
GLM_COMMAND_TOKENS = (SOP, EOP, CLS, MASK, SEP, UNK, GMASK, SMASK)
GLM_BLANK_TOKENS = (SOP, EOP, GMASK, SMASK)  # always present, whatever tokens fill the other roles


@dataclass(frozen=True)
class GLMTokens:
    """Ids of the tokens the blank-infilling layout needs, resolved once from a tokenizer's roles."""

    pad: int
    cls: int
    eos: int
    sop: int
    eop: int
    masks: frozenset[int]
    mask: int  # [MASK], the span blank (masks also holds [sMASK] and [gMASK] when present)

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> GLMTokens:
        vocab = tokenizer.get_vocab()
        roles = {"pad_token": tokenizer.pad_token, "cls_token": tokenizer.cls_token, "eos_token": tokenizer.eos_token,
                 "mask_token": MASK, "sop": SOP, "eop": EOP}
        missing = [f"{role}={token!r}" for role, token in roles.items() if token is None or token not in vocab]
        if missing:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} lacks GLM special tokens {missing}; "
                             "load it with load_backbone_tokenizer, which adds them")
        return cls(vocab[roles["pad_token"]], vocab[roles["cls_token"]], vocab[roles["eos_token"]], vocab[SOP],
                   vocab[EOP], frozenset(vocab[t] for t in (MASK, SMASK, GMASK) if t in vocab), vocab[MASK])

    @property
    def all_ids(self) -> list[int]:
        """Every id the layout writes itself: rows a pretrained backbone must learn when they are new."""
        return sorted({self.pad, self.cls, self.eos, self.sop, self.eop, *self.masks})
