"""Beam search and seeded sampling of free text beside greedy, and the families' typed decoding option."""

from __future__ import annotations

import pytest
import torch

from recsys_lightning.generation.generator import Generator
from recsys_lightning.generation.text import TextDecoding, beam_infill, filtered, greedy_infill, sample_infill
from recsys_lightning.infilling.layout import Blank, blank_infilling_mask, collate_infill, collate_part_a, infill
from recsys_lightning.registry import discover, get_task
from recsys_lightning.texts import TextDecodingOption
from tests.conftest import make_glm

STEPS = 6


@pytest.fixture
def prompts(tokens) -> tuple[list[list[int]], list[list[int]]]:
    m = min(tokens.masks)
    return ([[tokens.cls, 30, 31, m, tokens.eos], [tokens.cls, m, 33, tokens.eos], [tokens.cls, 50, m, 52, tokens.eos],
             [tokens.cls, 60, 61, 62, m, tokens.eos]], [[], [44], [], [40, 41, 42]])


def batch_of(tokens, prompts, openings) -> dict[str, torch.Tensor]:
    m = min(tokens.masks)
    return collate_part_a([{"input_ids": p, "mask_index": p.index(m), "part_b_ids": o}
                           for p, o in zip(prompts, openings)], tokens.pad)


def run(fn, model, tokens, batch, *args, **kwargs):
    return fn(model, batch["input_ids"], batch["lengths"], batch["mask_index"], tokens.sop, tokens.eop, STEPS, *args,
              part_b_ids=batch["part_b_ids"], **kwargs)


def loglik(model, tokens, prompt: list[int], opening: list[int], span: list[int]) -> float:
    """Reference: log p(span, and <|endofpiece|> if it ended early) from one full forward of the whole layout."""
    m = min(tokens.masks)
    row = infill(prompt, [Blank(prompt.index(m), [*opening, *span])], tokens)
    full = collate_infill([row], tokens.pad)
    with torch.no_grad():
        logits = model(full["input_ids"], full["position_ids"],
                       blank_infilling_mask(full["segment_ids"], full["part_a"]))
    logp = logits.logits[0].float().log_softmax(-1)
    last = len(row["input_ids"]) - 1
    total = sum(float(logp[last - len(span) + j, t]) for j, t in enumerate(span))
    return total + (float(logp[last, tokens.eop]) if len(span) < STEPS else 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_width_one_is_greedy(tokenizer, tokens, prompts, seed):
    model = make_glm(len(tokenizer), seed)
    batch = batch_of(tokens, *prompts)
    texts, _ = run(beam_infill, model, tokens, batch, 1)
    assert texts == run(greedy_infill, model, tokens, batch)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_finds_text_at_least_as_likely_as_greedy_and_scores_it_exactly(tokenizer, tokens, prompts, seed):
    model = make_glm(len(tokenizer), seed)
    batch = batch_of(tokens, *prompts)
    greedy = run(greedy_infill, model, tokens, batch)
    texts, scores = run(beam_infill, model, tokens, batch, 5)
    for prompt, opening, g, text, score in zip(*prompts, greedy, texts, scores.tolist()):
        assert score == pytest.approx(loglik(model, tokens, prompt, opening, text), abs=1e-4)
        assert score >= loglik(model, tokens, prompt, opening, g) - 1e-5


def test_a_beam_as_wide_as_the_vocabulary_finds_the_most_likely_two_token_text(tokenizer, tokens, prompts):
    # two steps: the first keeps every first token, the last ranks every pair, so the search is exhaustive
    model = make_glm(len(tokenizer))
    m, v, prompt = min(tokens.masks), len(tokenizer), prompts[0][0]
    rows = [infill(prompt, [Blank(prompt.index(m), [t])], tokens) for t in range(v)]
    full = collate_infill(rows, tokens.pad)
    with torch.no_grad():
        logp = model(full["input_ids"], full["position_ids"],
                     blank_infilling_mask(full["segment_ids"], full["part_a"])).logits.float().log_softmax(-1)
    first, after = logp[0, -2], logp[:, -1]  # log p(t1) (the same in every row), log p(. | t1)
    best = max(float(first[tokens.eop]), float((first[:, None] + after).max()))  # ended at once, or two tokens
    batch = batch_of(tokens, [prompt], [[]])
    _, scores = beam_infill(model, batch["input_ids"], batch["lengths"], batch["mask_index"], tokens.sop, tokens.eop,
                            2, v)
    assert float(scores[0]) == pytest.approx(best, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_sampling_with_top_k_one_is_greedy(tokenizer, tokens, prompts, seed):
    model = make_glm(len(tokenizer), seed)
    batch = batch_of(tokens, *prompts)
    sampled = run(sample_infill, model, tokens, batch, [7, 8, 9, 10], temperature=2.0, top_k=1)
    assert sampled == run(greedy_infill, model, tokens, batch)


def test_seeded_sampling_is_reproducible_and_a_rows_text_does_not_depend_on_its_batch(tokenizer, tokens, prompts):
    model = make_glm(len(tokenizer))
    batch = batch_of(tokens, *prompts)
    seeds = [11, 12, 13, 14]
    first = run(sample_infill, model, tokens, batch, seeds, temperature=1.5)
    assert first == run(sample_infill, model, tokens, batch, seeds, temperature=1.5)
    alone = run(sample_infill, model, tokens, batch_of(tokens, [prompts[0][1]], [prompts[1][1]]), [12],
                temperature=1.5)
    assert alone == first[1:2]
    other = run(sample_infill, model, tokens, batch, [s + 100 for s in seeds], temperature=1.5)
    assert other != first  # another seed draws other text (a random model's tokens are far from one-hot)


def test_top_p_keeps_the_smallest_most_likely_set_reaching_p_and_always_the_best_token():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).log_softmax(-1)  # probabilities ~.64 .24 .09 .03
    kept = lambda p: torch.isfinite(filtered(logits, 0, p))[0].tolist()
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.8) == [True, True, False, False]
    assert kept(0.95) == [True, True, True, False]
    assert torch.isfinite(filtered(logits, 2, 1.0))[0].tolist() == [True, True, False, False]


def test_the_generator_decodes_as_its_decoding_says(tokenizer, tokens, prompts):
    model = make_glm(len(tokenizer))
    batch = {**batch_of(tokens, *prompts), "request_id": torch.tensor([3, 4, 5, 6])}
    generator = Generator(model, tokens, beam_size=4)
    assert generator.generate(batch, STEPS) == run(greedy_infill, model, tokens, batch)
    assert generator.generate(batch, STEPS, TextDecoding("beam", num_beams=3)) == run(beam_infill, model, tokens,
                                                                                      batch, 3)[0]
    sampled = generator.generate(batch, STEPS, TextDecoding("sample", seed=5))
    assert sampled == generator.generate(batch, STEPS, TextDecoding("sample", seed=5))
    assert generator.generate(batch, STEPS, TextDecoding("sample", top_k=1)) == run(greedy_infill, model, tokens,
                                                                                    batch)


@pytest.mark.parametrize("name", ["explanation", "review"])
def test_text_families_take_a_typed_decoding_option_that_stays_out_of_the_cache_key(name):
    discover()
    cls = get_task(name)
    family = cls(decoding={"method": "sample", "top_p": 0.9, "seed": 3})
    assert family.decoding == TextDecodingOption("sample", top_p=0.9, seed=3)
    assert cls().decoding.method == "greedy"
    assert cls.row_options({"max_new_tokens": 8, "decoding": {"method": "beam"}}) == {"max_new_tokens": 8}
    with pytest.raises(ValueError, match="num_beams"):
        cls(decoding={"method": "beam", "num_beams": 0})
    with pytest.raises(ValueError, match="method"):
        cls(decoding={"method": "nucleus"})
