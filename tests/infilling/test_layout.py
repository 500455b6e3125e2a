import torch

from recsys_lightning.infilling.layout import (IGNORE, Blank, blank_infilling_mask, collate_infill, infill,
                                          part_b_targets)


def test_infill_positions_and_labels(tokens):
    m = min(tokens.masks)
    part_a = [tokens.cls, 11, m, 12, m, tokens.eos]
    row = infill(part_a, [Blank(2, [21, 22]), Blank(4, [31])], tokens)
    assert row["input_ids"] == part_a + [tokens.sop, 21, 22, tokens.sop, 31]
    assert row["labels"] == [IGNORE] * 6 + [21, 22, tokens.eop, 31, tokens.eop]
    # inter-position: place in Part A, or the blank's mask position in Part B
    assert row["inter_position"] == [0, 1, 2, 3, 4, 5, 2, 2, 2, 4, 4]
    # intra-position: 0 in Part A, 1..n inside each span
    assert row["intra_position"] == [0] * 6 + [1, 2, 3, 1, 2]
    assert row["part_a_length"] == 6


def test_mask_part_a_bidirectional_part_b_causal(tokens):
    m = min(tokens.masks)
    rows = [infill([tokens.cls, m, tokens.eos], [Blank(1, [5, 6])], tokens),
            infill([tokens.cls, 7, m, tokens.eos], [Blank(2, [5])], tokens)]
    batch = collate_infill(rows, tokens.pad)
    mask = blank_infilling_mask(batch["segment_ids"], batch["part_a"])[:, 0]
    a = mask[0]
    assert a[0, 2]  # a Part A token sees a later Part A token
    assert not a[0, 3]  # but never Part B
    assert a[3, :3].all() and a[4, 3] and not a[3, 4]  # Part B: all of Part A, earlier Part B, not later
    b = mask[1]  # 4 + 2 tokens, no padding in this row... the first row is padded to 6
    assert b[5, :6].all()
    assert not mask[0, :, 5].any() or mask[0, 5, 5]  # padding key only visible to itself
    assert not mask[0, :5, 5].any()


def test_part_b_targets_are_the_labelled_positions_padded_to_a_bucket():
    labels = torch.full((3, 10), IGNORE)
    labels[0, 7:9] = torch.tensor([5, 6])
    labels[2, 2] = 9
    out = part_b_targets(labels, bucket=4)
    assert out["target_positions"].tolist() == [7, 8, 22, 0]  # flat into 3 x 10; padding points at position 0
    assert out["targets"].tolist() == [5, 6, 9, IGNORE]
    assert part_b_targets(labels, bucket=3)["targets"].shape == (3,)  # an exact multiple gets no padding
