import pytest

from recsys_lightning.generation.text import greedy_infill
from recsys_lightning.infilling.layout import Blank, blank_infilling_mask, collate_infill, collate_part_a, infill
from tests.conftest import make_glm


@pytest.mark.parametrize("openings", [[[], []], [[44], [40, 41, 42]]])
def test_greedy_infill_equals_step_by_step_argmax_of_full_forwards(tokenizer, tokens, openings):
    model = make_glm(len(tokenizer))
    m = min(tokens.masks)
    prompts = [[tokens.cls, 30, 31, m, tokens.eos], [tokens.cls, m, 33, tokens.eos]]
    batch = collate_part_a([{"input_ids": p, "mask_index": p.index(m), "part_b_ids": o}
                            for p, o in zip(prompts, openings)], tokens.pad)
    got = greedy_infill(model, batch["input_ids"], batch["lengths"], batch["mask_index"], tokens.sop, tokens.eop, 6,
                        batch["part_b_ids"])
    for prompt, opening, generated in zip(prompts, openings, got):
        span: list[int] = []
        for _ in range(6):  # reference: re-run the whole layout, opening included, for every new token
            row = infill(prompt, [Blank(prompt.index(m), [*opening, *span])], tokens)
            full = collate_infill([row], tokens.pad)
            logits = model(full["input_ids"], full["position_ids"],
                           blank_infilling_mask(full["segment_ids"], full["part_a"])).logits
            nxt = int(logits[0, len(row["input_ids"]) - 1].argmax())
            if nxt == tokens.eop:
                break
            span.append(nxt)
        assert generated == span
