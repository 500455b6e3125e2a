"""RecSysLLM: the shared LightningModule. Trains on mixed blank-infilling batches; evaluation and prediction are
delegated to the task family each dataloader belongs to."""

from __future__ import annotations

import functools
import hashlib
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MetricCollection
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.infilling.tokenizer import tokenizer_identity
from recsys_lightning.errors import CheckpointError
from recsys_lightning.data.semantic import content_texts
from recsys_lightning.distributed import (gather_for_decoding, merge_list_states, mesh_device, release_after_decoding,
                                          shard_network)
from recsys_lightning.generation.generator import Generator
from recsys_lightning.model.backbones import Backbone, NativeGLM
from recsys_lightning.infilling.layout import IGNORE
from recsys_lightning.model.lora import LoRA

STAGE_PREFIX = {"fit": "val", "validate": "val", "test": "test", "predict": "predict"}
# What must agree between a checkpoint's data and the current data for the checkpoint to be evaluated on it.
FINGERPRINT_KEYS = ("dataset", "format", "items", "item_index", "item_ids", "tokenizer")


def dataset_fingerprint(datamodule: Any) -> dict[str, Any]:
    """What a checkpoint was trained on: dataset name and format, users, items, the item index and every item's
    rendering (a hash: semantic codes or a seeded numbering that differ under the same tokens), and the tokenizer.

    Needs the data module's data, index and tokenizer (`load()`), not its examples, so it is checked before they are
    built.
    """
    data, index, tokenizer = datamodule.data, datamodule.index, datamodule.tokenizer
    renders = "\n".join(index.render(i) for i in range(len(index)))
    return {"dataset": data.name, "format": datamodule.hparams.format, "users": data.num_users,
            "items": data.num_items, "item_index": datamodule.hparams.item_index,
            "item_ids": hashlib.sha256(renders.encode()).hexdigest()[:16],
            "tokenizer": hashlib.sha256(tokenizer_identity(tokenizer).encode()).hexdigest()[:16]}


def check_fingerprint(saved: Any, current: dict[str, Any], where: str) -> None:
    """Refuse to evaluate (or resume) a checkpoint on other data than it was trained on; checkpoints written before
    fingerprints were saved pass."""
    if not isinstance(saved, dict):
        return
    differ = [k for k in FINGERPRINT_KEYS if k in saved and saved[k] != current.get(k)]
    if differ:
        was = ", ".join(f"{k} {saved[k]!r}" for k in differ)
        now = ", ".join(f"{k} {current.get(k)!r}" for k in differ)
        raise CheckpointError(f"{where} was trained on other data ({was}) than the configured data ({now}); use the "
                              f"config it was trained with (its data.root, data.format, data.item_index)")


def item_texts(datamodule: Any) -> dict[str, str]:
    """Each atomic item token and its item's textualized description without its name (`semantic.content_texts`, what
    semantic ids encode too): what a backbone's `init_item_tokens: text` encodes."""
    index, new = datamodule.index, set(datamodule.index.new_tokens)
    texts = content_texts(datamodule.data)
    return {index.render(i): texts[i] for i in range(len(index)) if index.render(i) in new}


class RecSysLLM(L.LightningModule):
    """A blank-infilling language model trained as a recommender over any mix of task families."""

    def __init__(
        self,
        backbone: Backbone | None = None,
        lora: LoRA | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        schedule: Literal["cosine", "constant"] = "cosine",
        beam_size: int = 20,
        score_end: bool = True,
        compile: bool = False,
        decode_float32: bool = False,
        rescore_float32: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        """
        Args:
            backbone: the network recipe (default: a tiny native GLM).
            lora: LoRA settings; None fine-tunes every weight.
            lr: peak AdamW learning rate.
            weight_decay: AdamW weight decay (not applied to biases, norms and embeddings).
            warmup_steps: linear warm-up steps before the schedule.
            schedule: learning-rate shape after warm-up.
            beam_size: beams of the Trie-constrained search in evaluation and prediction.
            score_end: rank items by their tokens and the end token <|endofpiece|> after them. False leaves the
                end token out, for blanks opened by an item history (the causal form), where it was trained only
                at a row's end; it needs item token sequences none of which begins another (atomic item ids).
            compile: torch.compile the training forward (network, mask and Part B logits as one graph) for
                fused GPU kernels; evaluation and prediction decode with the eager network.
            decode_float32: decode (validation, test, predict) with autocast off, in the float32 weights, under a
                `bf16-mixed` trainer: bf16 logits reorder near-tied items, so metrics move by a few hits.
            rescore_float32: decode in bf16 under a `bf16-mixed` trainer, then rank each request's final beam
                (`beam_size` items) by float32 log-likelihoods (`Generator`): float32's order for the cost of
                scoring `beam_size` items per request; items the bf16 search pruned before its last step stay out.
            label_smoothing: mass of each Part B target spread over the whole vocabulary in the training loss
                (`F.cross_entropy`), a regularizer of the output layer that dropout does not reach.
        """
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if beam_size < 1:  # decoding takes max(beam_size, top_k): 0 would silently search with 10 beams
            raise ValueError(f"model.beam_size must be at least 1, got {beam_size}")
        if warmup_steps < 0:
            raise ValueError(f"model.warmup_steps must be at least 0, got {warmup_steps}")
        self.backbone = backbone or NativeGLM()
        self.lora = lora
        self.save_hyperparameters()  # under LightningCLI: the given config (class_path dicts), so it reloads
        self.network: nn.Module | None = None
        self.tokenizer: Any = None
        self.streams: list[Any] = []
        self.metric_sets = nn.ModuleDict()
        # another optimizer or schedule (RecSysCLI sets them from --optimizer / --lr_scheduler); not hyperparameters
        self.make_optimizer: OptimizerCallable | None = None
        self.make_lr_scheduler: LRSchedulerCallable | None = None

    # --- set-up --------------------------------------------------------------------------------
    def check_settings(self, datamodule: Any) -> None:
        """Settings of the model and the data that cannot work together, refused before any work: the longest row
        (`data.max_length`) must fit the backbone's position tables, and a blank as long as a row (at most
        max_length - 3 tokens, so intra-positions up to max_length - 2) its block-position table."""
        positions = self.backbone.max_positions()
        max_length = datamodule.hparams.max_length
        if positions is not None and max_length > positions:
            raise ValueError(f"data.max_length ({max_length}) exceeds the {positions} positions of "
                             f"model.backbone ({type(self.backbone).__name__}); lower data.max_length or give the "
                             f"backbone more positions")
        blocks = self.backbone.block_positions()
        if blocks is not None and max_length - 1 > blocks:
            raise ValueError(f"data.max_length ({max_length}) allows blanks longer than the {blocks} block positions "
                             f"of model.backbone ({type(self.backbone).__name__}); set "
                             f"model.backbone.init_args.max_block_positions to at least {max_length - 1} or lower "
                             f"data.max_length")

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        self.check_settings(datamodule)
        self.tokenizer = datamodule.tokenizer
        self.tokens = GLMTokens.of(self.tokenizer)
        prefix = STAGE_PREFIX[stage]
        self.streams = datamodule.streams(prefix)  # one per loader of the stage, in order
        if not self.hparams.score_end:
            for family in {id(s.family): s.family for s in datamodule.eval_streams}.values():
                if not family.ctx.item_trie.prefix_free:
                    raise ValueError(f"model.score_end: false needs item token sequences none of which begins "
                                     f"another (data.item_index: atomic); family {family.name!r}'s items do not")
        if prefix != "predict":
            for i, stream in enumerate(self.streams):
                metrics = MetricCollection(stream.family.metrics(stream.target), prefix=f"{prefix}/{stream.prefix}")
                self.metric_sets[f"{prefix}_{i}"] = metrics

    def configure_model(self) -> None:
        """Build the network once the tokenizer is known (also the hook FSDP-style strategies shard in)."""
        if self.network is not None:
            return
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        for option in ("decode_float32", "rescore_float32"):
            if self.hparams.get(option) and self.device_mesh is not None and precision.startswith("bf16"):
                raise ValueError(f"model.{option}: true needs float32 weights to decode with; FSDP2 under bf16 "
                                 f"gathers bf16 ones (drop the option, or train without bf16)")
        if self.device_mesh is not None and self.backbone.loads_sharded:  # FSDP2: each rank reads its shards alone
            shard = functools.partial(shard_network, mesh=self.device_mesh, precision=precision)
            self.network = self.backbone.build_sharded(self.tokenizer, self.lora, shard, mesh_device(self.device_mesh))
        else:
            network = self.backbone.build(self.tokenizer)
            if getattr(self.backbone, "wants_item_texts", False) and self._fresh_fit():
                self.backbone.init_item_tokens(network, self.tokenizer, item_texts(self.trainer.datamodule))
            if self.lora is not None:
                network = self.backbone.add_lora(network, self.lora, self.tokenizer)
            self.network = shard_network(network, self.device_mesh, precision)
        if self.hparams.compile:
            self.compile()  # `self(batch)`, which only training_step calls

    def _fresh_fit(self) -> bool:
        """A fit that starts from the backbone's weights (no checkpoint will overwrite the network)."""
        return self._trainer is not None and self.trainer.state.fn == "fit" and self.trainer.ckpt_path is None

    # --- training ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (N, vocab) at the batch's `target_positions`: its Part B tokens, padded (layout.part_b_targets)."""
        mask = self.backbone.infilling_mask(batch["segment_ids"], batch["part_a"])
        return self.network(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask,
                            logits_positions=batch["target_positions"]).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.hparams.compile:  # the Part B target count varies by step: one dynamic graph, not one per count
            torch._dynamo.mark_dynamic(batch["target_positions"], 0)
        loss = F.cross_entropy(self(batch).float(), batch["targets"], ignore_index=IGNORE,
                               label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters in two groups: `weight_decay` on weight matrices, none on biases, norms and
        embeddings (whichever optimizer gets them, the groups' own weight decay wins over its default)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "embeddings" in name else decay).append(p)
        return [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW at `lr` over `parameter_groups`, warm-up then `schedule` per step; `make_optimizer` (`--optimizer`)
        replaces AdamW over the same groups, `make_lr_scheduler` (`--lr_scheduler`) the schedule, stepped as
        LightningCLI steps it (per epoch; a ReduceLROnPlateau watches its `monitor`)."""
        hp = self.hparams
        groups = self.parameter_groups()
        optimizer = self.make_optimizer(groups) if self.make_optimizer else torch.optim.AdamW(groups, lr=hp.lr)
        if self.make_lr_scheduler is not None:
            scheduler = self.make_lr_scheduler(optimizer)
            monitor = getattr(scheduler, "monitor", None)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, **({"monitor": monitor} if monitor else {})}}
        if hp.schedule == "cosine":
            scheduler = get_cosine_schedule_with_warmup(optimizer, hp.warmup_steps,
                                                        int(self.trainer.estimated_stepping_batches))
        else:
            scheduler = get_constant_schedule_with_warmup(optimizer, hp.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- evaluation ----------------------------------------------------------------------------
    @property
    def generator(self) -> Generator:
        return Generator(self.network, self.tokens, self.hparams.beam_size, score_end=self.hparams.score_end,
                         rescore_float32=self.hparams.get("rescore_float32", False))

    def decoding_precision(self) -> AbstractContextManager:
        """The context decoding runs in: autocast off under `decode_float32`, else the trainer's precision."""
        return torch.autocast(self.device.type, enabled=False) if self.hparams.decode_float32 else nullcontext()

    def _evaluate(self, prefix: str, batch: dict[str, Any], dataloader_idx: int) -> None:
        stream = self.streams[dataloader_idx]
        with self.decoding_precision():
            stream.family.evaluate(self.generator, batch, self.metric_sets[f"{prefix}_{dataloader_idx}"])

    def _log_metrics(self, prefix: str) -> None:
        for key, metrics in self.metric_sets.items():
            if key.startswith(prefix + "_"):
                merge_list_states(metrics)
                self.log_dict(metrics.compute())
                metrics.reset()

    def on_validation_epoch_start(self) -> None:
        gather_for_decoding(self.network)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("val", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        release_after_decoding(self.network)
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        gather_for_decoding(self.network)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("test", batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        release_after_decoding(self.network)
        self._log_metrics("test")

    def on_predict_epoch_start(self) -> None:
        gather_for_decoding(self.network)

    def on_predict_epoch_end(self) -> None:
        release_after_decoding(self.network)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        stream = self.streams[dataloader_idx]
        with self.decoding_precision():
            answers = stream.family.predict(self.generator, batch)
        # the stream (seen/unseen templates, target slot) tells apart the lines of a user asked in several streams
        return [{"task": stream.family.name, "stream": stream.name, **answer} for answer in answers]

    # --- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokenizer"] = tokenizer_identity(self.tokenizer)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if getattr(datamodule, "data", None) is not None:
            checkpoint["dataset"] = dataset_fingerprint(datamodule)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("tokenizer")
        if saved is not None and saved != tokenizer_identity(self.tokenizer):
            raise ValueError("the checkpoint was trained with another tokenizer than the data module's; run through "
                             "`recsys-lightning`, which loads the checkpoint's tokenizer, or set data.tokenizer")
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if getattr(datamodule, "data", None) is not None:
            check_fingerprint(checkpoint.get("dataset"), dataset_fingerprint(datamodule), "the checkpoint")
