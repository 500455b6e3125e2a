"""RecSysLLM's training forward (`compile: true`: torch.compile, the eager forward's loss; label smoothing) and its
decoding precision."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection

from recsys_lightning.pipeline.packing import collate_packed
from recsys_lightning.model.backbones import NativeGLM
from recsys_lightning.infilling.layout import IGNORE
from recsys_lightning.errors import CheckpointError
from recsys_lightning.module import RecSysLLM, check_fingerprint, dataset_fingerprint
from recsys_lightning.pipeline.datamodule import RecDataModule
from tests.pipeline.test_packing import samples


def test_compile_gives_the_eager_training_loss_and_leaves_decoding_eager(tokenizer, tokens):
    module = RecSysLLM(NativeGLM(hidden_dropout=0.0, attention_dropout=0.0), compile=True)
    module.tokenizer = tokenizer
    torch.manual_seed(0)
    module.configure_model()
    network = module.network
    assert not hasattr(network, "_compiled_call_impl") or network._compiled_call_impl is None  # decoding: eager
    rows = samples(tokens, 12)
    batches = [collate_packed([rows[:6], rows[6:]], tokens.pad), collate_packed([rows], tokens.pad)]
    for batch in batches:  # two shapes: the second compiles again, and must still match
        compiled = F.cross_entropy(module(batch), batch["targets"], ignore_index=IGNORE)
        mask = module.backbone.infilling_mask(batch["segment_ids"], batch["part_a"])
        eager = F.cross_entropy(network(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                        attention_mask=mask, logits_positions=batch["target_positions"]).logits,
                                batch["targets"], ignore_index=IGNORE)
        assert compiled.item() == pytest.approx(eager.item(), rel=1e-4)
    assert module._compiled_call_impl is not None


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # training_step outside a Trainer
def test_compiled_training_step_is_one_graph_for_every_part_b_target_count(tokenizer, tokens):
    module = RecSysLLM(NativeGLM(hidden_dropout=0.0, attention_dropout=0.0), compile=True)
    module.tokenizer = tokenizer
    module.configure_model()
    rows = samples(tokens, 40)
    batches = [collate_packed([rows[:20], rows[20:]], tokens.pad, length=512),
               collate_packed([rows[:4], rows[4:8]], tokens.pad, length=512)]
    assert batches[0]["target_positions"].shape != batches[1]["target_positions"].shape
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for batch in batches:
        module.training_step(batch, 0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # training_step outside a Trainer
def test_label_smoothing_spreads_part_b_targets_over_the_vocabulary(tokenizer, tokens):
    module = RecSysLLM(NativeGLM(hidden_dropout=0.0, attention_dropout=0.0), label_smoothing=0.1)
    module.tokenizer = tokenizer
    module.configure_model()
    batch = collate_packed([samples(tokens, 6)], tokens.pad)
    part_b = batch["targets"] != IGNORE
    targets, log_p = batch["targets"][part_b], module(batch)[part_b].log_softmax(-1)
    nll, uniform = -log_p.gather(1, targets[:, None]).mean(), -log_p.mean()
    loss = module.training_step(batch, 0)
    assert loss.item() == pytest.approx((0.9 * nll + 0.1 * uniform).item(), abs=1e-5)
    assert abs(loss.item() - nll.item()) > 1e-4  # the unsmoothed loss would fail the line above


def test_label_smoothing_outside_zero_to_one_is_refused_before_training():
    with pytest.raises(ValueError, match="model.label_smoothing"):
        RecSysLLM(label_smoothing=1.0)


class AutocastProbe:
    """A family stand-in that records whether bf16 autocast is on while it decodes."""

    name = "probe"

    def __init__(self) -> None:
        self.autocast: list[bool] = []

    def evaluate(self, generator, batch, metrics) -> None:
        self.autocast.append(torch.is_autocast_enabled("cpu"))

    def predict(self, generator, batch) -> list[dict]:
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return [{"user": 0}]


@pytest.mark.parametrize("decode_float32", [False, True])
def test_decode_float32_turns_autocast_off_for_evaluation_and_prediction(tokens, decode_float32):
    module = RecSysLLM(decode_float32=decode_float32)
    module.tokens = tokens
    probe = AutocastProbe()
    module.streams = [SimpleNamespace(family=probe, name="seen-item")]
    module.metric_sets["val_0"] = MetricCollection({})
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what a bf16-mixed trainer wraps its steps in
        module.validation_step({}, 0)
        assert module.predict_step({}, 0) == [{"task": "probe", "stream": "seen-item", "user": 0}]
    assert probe.autocast == [not decode_float32] * 2


def test_decode_float32_refuses_fsdp2_bf16_weights(tokenizer):
    module = RecSysLLM(decode_float32=True)
    module.tokenizer = tokenizer
    module._device_mesh = object()  # as ModelParallelStrategy sets it
    module._trainer = SimpleNamespace(precision="bf16-mixed")
    with pytest.raises(ValueError, match="decode_float32"):
        module.configure_model()


def test_the_dataset_fingerprint_tells_item_numberings_apart_under_the_same_tokens(tiny_reviews, tokenizer):
    def fingerprint(seed: int) -> dict:
        dm = RecDataModule(root=str(tiny_reviews), item_index="random", cache_dir=None, seed=seed)
        dm.use_tokenizer(copy.deepcopy(tokenizer))  # one tokenizer: only the seeded numbering differs
        dm.load()
        return dataset_fingerprint(dm)

    trained, other = fingerprint(0), fingerprint(1)
    assert {k for k in trained if trained[k] != other[k]} == {"item_ids"}  # same data, tokens and index kind
    check_fingerprint(trained, fingerprint(0), "the checkpoint")  # the same numbering passes
    with pytest.raises(CheckpointError, match="item_ids"):
        check_fingerprint(trained, other, "the checkpoint")
