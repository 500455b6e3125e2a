import pytest
import torch

from recsys_lightning.generation.answers import AnswerSet
from recsys_lightning.generation.generator import Generator
from recsys_lightning.generation.scoring import pad_candidates, score_candidates
from recsys_lightning.infilling.layout import collate_part_a
from tests.conftest import make_glm
from tests.generation.reference import OPENINGS, brute_force_scores, prompts, random_catalog


@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_candidate_scores_equal_brute_force_forwards(tokenizer, tokens, chunk):
    model = make_glm(len(tokenizer), seed=2)
    rows = [{"input_ids": p, "mask_index": p.index(min(tokens.masks))} for p in prompts(tokens)]
    batch = collate_part_a(rows, tokens.pad)
    per_request = [random_catalog(20, seed=s, max_len=4) for s in (3, 4)]
    scores = score_candidates(model, batch["input_ids"], batch["lengths"], batch["mask_index"],
                              pad_candidates(per_request), tokens.sop, tokens.eop, chunk=chunk)
    assert scores.shape == (2, 20)
    for b, row in enumerate(rows):
        ref = brute_force_scores(model, row["input_ids"], row["mask_index"], per_request[b], tokens)
        assert torch.allclose(scores[b], ref, atol=1e-4)


def opened_prompts(tokens):
    """The two prompts with their blanks opened by OPENINGS, as rows and a collated batch."""
    rows = [{"input_ids": p, "mask_index": p.index(min(tokens.masks)), "part_b_ids": o}
            for p, o in zip(prompts(tokens), OPENINGS)]
    return rows, collate_part_a(rows, tokens.pad)


def test_candidate_scores_after_a_given_opening_equal_brute_force_forwards(tokenizer, tokens):
    model = make_glm(len(tokenizer), seed=2)
    rows, batch = opened_prompts(tokens)
    per_request = [random_catalog(20, seed=s, max_len=4) for s in (3, 4)]
    scores = score_candidates(model, batch["input_ids"], batch["lengths"], batch["mask_index"],
                              pad_candidates(per_request), tokens.sop, tokens.eop, chunk=7,
                              part_b_ids=batch["part_b_ids"])
    for b, (row, opening) in enumerate(zip(rows, OPENINGS)):
        ref = brute_force_scores(model, row["input_ids"], row["mask_index"], per_request[b], tokens, opening)
        assert torch.allclose(scores[b], ref, atol=1e-4)


def test_without_the_end_token_items_score_their_own_tokens_and_answers_stay_exact(tokenizer, tokens):
    model = make_glm(len(tokenizer), seed=5)
    rows, batch = opened_prompts(tokens)
    per_request = [random_catalog(12, seed=s, max_len=3) for s in (5, 6)]
    generator = Generator(model, tokens, beam_size=4, score_chunk=5, score_end=False)
    items = generator.score_items(batch, pad_candidates(per_request))
    exact = generator.score_candidates(batch, pad_candidates(per_request))  # answers and entity perplexity
    for b, (row, opening) in enumerate(zip(rows, OPENINGS)):
        args = (model, row["input_ids"], row["mask_index"], per_request[b], tokens, opening)
        assert torch.allclose(items[b], brute_force_scores(*args, score_end=False), atol=1e-4)
        assert torch.allclose(exact[b], brute_force_scores(*args), atol=1e-4)
    assert not torch.allclose(items, exact, atol=1e-2)


def test_answer_sets_score_every_answer_as_a_blank_filling(tokenizer, tokens):
    model = make_glm(len(tokenizer), seed=3)
    rows = [{"input_ids": p, "mask_index": p.index(min(tokens.masks))} for p in prompts(tokens)]
    batch = collate_part_a(rows, tokens.pad)
    answers = AnswerSet(["yes", "no", "1", "5"], tokenizer)
    generator = Generator(model, tokens, beam_size=4)
    out = answers.scores(generator, batch)
    ids = tokenizer(answers.texts, add_special_tokens=False)["input_ids"]
    for b, row in enumerate(rows):
        ref = brute_force_scores(model, row["input_ids"], row["mask_index"], ids, tokens)
        assert torch.allclose(out[b], ref, atol=1e-4)
        assert answers.best(generator, batch)[b] == answers.texts[int(ref.argmax())]
    with pytest.raises(ValueError, match="distinct answers"):
        AnswerSet(["yes", "yes"], tokenizer)


def test_ragged_or_empty_candidates_are_rejected():
    with pytest.raises(ValueError, match="same number of candidates"):
        pad_candidates([[[1]], [[1], [2]]])
    with pytest.raises(ValueError, match="request 0, candidate 1: empty"):
        pad_candidates([[[1], []]])
