"""Free-text decoding inside a blank: greedy, beam search or sampling; Part A encoded once, Part B grown with
intra-positions 1, 2, ...

Beam search lays a request's beams side by side as the query tokens of its row (see `blank.py`), as the item
beam search does, and ranks by exact sequence log-likelihood (no length penalty): at each step a candidate
ending in `<|endofpiece|>` that ranks among the `num_beams` best finishes, the best unfinished continue, and at
`max_new_tokens` the running beams finish as they are (greedy stops there too). Sampling draws each row's
tokens with its own seeded generator, so a row's text depends on its seed only, not on the batch around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from recsys_lightning.generation.blank import Model, PartA

NEG = float("-inf")


@dataclass(frozen=True)
class TextDecoding:
    """How free text is decoded.

    Args:
        method: "greedy" (the most likely token each step), "beam" (beam search over sequence log-likelihood) or
            "sample" (ancestral sampling, after temperature, top-k and top-p).
        num_beams: beams per prompt for "beam" (1 is greedy).
        temperature: logits are divided by it before sampling (> 0).
        top_k: sample among the k most likely tokens only; 0 keeps all.
        top_p: sample among the smallest set of most likely tokens whose probability reaches top_p; 1 keeps all.
        seed: seed of sampling; each row's generator is seeded by it and the row's request id.
    """

    method: Literal["greedy", "beam", "sample"] = "greedy"
    num_beams: int = 4
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("greedy", "beam", "sample"):
            raise ValueError(f"text decoding: method must be greedy, beam or sample, got {self.method!r}")
        if self.num_beams < 1 or self.temperature <= 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"text decoding: need num_beams >= 1, temperature > 0, top_k >= 0 and 0 < top_p <= 1, "
                             f"got {self}")


def _strip(rows: list[list[int]], eop: int) -> list[list[int]]:
    """Each row up to its first <|endofpiece|>, not included."""
    return [row[: row.index(eop)] if eop in row else row for row in rows]


@torch.no_grad()
def greedy_infill(model: Model, input_ids: torch.Tensor, lengths: torch.Tensor, mask_index: torch.Tensor,
                  sop: int, eop: int, max_new_tokens: int, part_b_ids: torch.Tensor | None = None) -> list[list[int]]:
    """The most likely token at each step until <|endofpiece|> (not included) or `max_new_tokens`, after any
    given opening of the blank (`part_b_ids`, see `PartA.encode`)."""
    return _step_infill(model, input_ids, lengths, mask_index, sop, eop, max_new_tokens, part_b_ids,
                        lambda logits: logits.argmax(-1))


@torch.no_grad()
def sample_infill(model: Model, input_ids: torch.Tensor, lengths: torch.Tensor, mask_index: torch.Tensor,
                  sop: int, eop: int, max_new_tokens: int, seeds: Sequence[int], temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, part_b_ids: torch.Tensor | None = None) -> list[list[int]]:
    """Tokens drawn one at a time from the temperature-scaled, top-k and top-p filtered distribution, each row
    with a generator seeded by its entry of `seeds`; stops as `greedy_infill` does."""
    generators = [torch.Generator().manual_seed(int(s) % 2**63) for s in seeds]

    def pick(logits: torch.Tensor) -> torch.Tensor:
        probs = filtered(logits.float() / temperature, top_k, top_p).softmax(-1).cpu()
        draws = [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)]
        return torch.cat(draws).to(logits.device)
    return _step_infill(model, input_ids, lengths, mask_index, sop, eop, max_new_tokens, part_b_ids, pick)


def filtered(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """`logits` (B, V) with tokens outside the top k (0: none cut) and outside the top-p nucleus set to -inf; the
    most likely token always stays."""
    if top_k:
        cut = logits.topk(min(top_k, logits.shape[-1]), -1).indices
        logits = torch.full_like(logits, NEG).scatter(-1, cut, logits.gather(-1, cut))
    if top_p < 1:
        ordered, order = logits.sort(-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass of the tokens ranked above each
        logits = logits.scatter(-1, order, ordered.masked_fill(before >= top_p, NEG))
    return logits


def _step_infill(model: Model, input_ids: torch.Tensor, lengths: torch.Tensor, mask_index: torch.Tensor, sop: int,
                 eop: int, max_new_tokens: int, part_b_ids: torch.Tensor | None, pick) -> list[list[int]]:
    """One token per row and step, chosen by `pick(logits (B, V)) -> (B,)`, until every row ended."""
    device = input_ids.device
    b = input_ids.shape[0]
    part_a = PartA.encode(model, input_ids, lengths, mask_index, sop, part_b_ids)
    cache = None
    tokens = part_a.first
    out = torch.full((b, max_new_tokens), eop, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        visible = torch.ones(b, 1, step + 1, dtype=torch.bool, device=device)
        logits, cache = part_a.decode(model, cache, tokens, torch.tensor([step + 1], device=device), visible)
        tokens = pick(logits[:, -1])[:, None]
        out[:, step] = torch.where(done, eop, tokens[:, 0])
        done |= tokens[:, 0] == eop
        if done.all():
            break
    return _strip(out.tolist(), eop)


@torch.no_grad()
def beam_infill(model: Model, input_ids: torch.Tensor, lengths: torch.Tensor, mask_index: torch.Tensor, sop: int,
                eop: int, max_new_tokens: int, num_beams: int, part_b_ids: torch.Tensor | None = None
                ) -> tuple[list[list[int]], torch.Tensor]:
    """The most likely text found by beam search for each prompt (without <|endofpiece|>) and its log-likelihood
    (B,): its tokens' log-probabilities plus that of <|endofpiece|> where it ended before `max_new_tokens`."""
    device = input_ids.device
    b = input_ids.shape[0]
    part_a = PartA.encode(model, input_ids, lengths, mask_index, sop, part_b_ids)
    cache = None
    tokens = part_a.first
    scores = torch.zeros(b, 1, device=device)
    texts = torch.empty(b, 1, 0, dtype=torch.long, device=device)  # each beam's tokens so far
    seen = torch.zeros(b, 1, 0, dtype=torch.bool, device=device)  # which earlier Part B keys each beam sees
    pool_scores = torch.full((b, num_beams), NEG, device=device)
    pool_texts = torch.full((b, num_beams, max_new_tokens), eop, dtype=torch.long, device=device)
    batch = torch.arange(b, device=device)[:, None]
    for step in range(max_new_tokens):
        width = tokens.shape[1]
        eye = torch.eye(width, dtype=torch.bool, device=device).expand(b, width, width)
        logits, cache = part_a.decode(model, cache, tokens, torch.tensor([step + 1], device=device),
                                      torch.cat([seen, eye], 2))
        log_probs = logits.float().log_softmax(-1)
        vocab = log_probs.shape[-1]
        cand = (scores[..., None] + log_probs).view(b, -1)
        keep = min(num_beams, cand.shape[1])
        best, order = cand.topk(keep, dim=1)
        last = step + 1 == max_new_tokens
        ends = (order % vocab == eop) | last  # at the length limit every candidate finishes as it is
        grown = torch.cat([texts[batch, order // vocab], (order % vocab)[..., None]], 2)
        finished = torch.nn.functional.pad(grown, (0, max_new_tokens - step - 1), value=eop)
        pool_scores, pool_texts = _pool(pool_scores, pool_texts, best.masked_fill(~ends, NEG), finished)
        if last:
            break
        scores, choice = cand.view(b, width, vocab).index_fill(2, torch.tensor([eop], device=device), NEG
                                                               ).view(b, -1).topk(keep, dim=1)
        scores = scores.masked_fill(scores[:, :1] <= pool_scores[:, -1:], NEG)  # can no longer beat the pool
        if bool(torch.isinf(scores).all()):
            break
        parent = choice // vocab
        seen = torch.cat([seen[batch, parent], parent[..., None] == torch.arange(width, device=device)], 2)
        texts = torch.cat([texts[batch, parent], (choice % vocab)[..., None]], 2)
        tokens = choice % vocab
    return _strip(pool_texts[:, 0].tolist(), eop), pool_scores[:, 0]


def _pool(pool_scores: torch.Tensor, pool_texts: torch.Tensor, scores: torch.Tensor, texts: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge newly finished texts (score -inf where none) into each request's pool of the best, best first."""
    merged, pick = torch.cat([pool_scores, scores], 1).topk(pool_scores.shape[1], dim=1)
    candidates = torch.cat([pool_texts, texts], 1)
    return merged, candidates.gather(1, pick[..., None].expand(-1, -1, candidates.shape[2]))
