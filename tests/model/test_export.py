"""`recsys-lightning export` round trips: LoRA fine-tuned on a pretrained native GLM and on a pretrained HF Llama
(both tiny, written locally), exported merged and adapter-only, reloaded through the written configs with
identical logits, and as a `Recommender` with neither the base model nor the dataset present; plus the demo fitting
and testing with the tiny Llama config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_class

from recsys_lightning import Recommender
from recsys_lightning.cli import main
from recsys_lightning.infilling.tokens import GLMTokens
from recsys_lightning.model.export import add_item_tokens, export, restore
from recsys_lightning.model.glm import GLMConfig, GLMModel
from recsys_lightning.infilling.layout import blank_infilling_mask
from recsys_lightning.builtin import builtin_dir
from recsys_lightning.data.schema import DataError
from recsys_lightning.recommender import export_recommender
from tests.conftest import ONE_EPOCH, SEQUENTIAL_ONLY
from tests.model.conftest import (one_sample, write_glm_tokenizer_config, write_gpt2_vocab, write_pretrained,
                                  write_thudm_checkpoint)

CONFIGS = builtin_dir("lightning_configs").parent / "lightning_configs"
SHORT = [*ONE_EPOCH, *SEQUENTIAL_ONLY, "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
         "--trainer.limit_test_batches", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1", "--data.batch_size", "8",
         "--data.eval_batch_size", "16", "--model.beam_size", "5"]


def cli(sub: str, tmp: Path, root: Path, *configs: Path | str, extra: tuple[str, ...] = ()) -> None:
    args = [sub]
    for config in (CONFIGS / "demo.yaml", *configs):
        args += ["--config", str(config)]
    args += [*SHORT, "--data.root", str(root), "--trainer.default_root_dir", str(tmp),
             "--data.cache_dir", str(tmp / "cache"), *extra]
    main(args + (["--checkpoint.dirpath", str(tmp / "ckpt")] if sub == "fit" else []))


def backbone_yaml(tmp: Path, class_path: str, **init_args) -> Path:
    path = tmp / "backbone_in.yaml"
    path.write_text(yaml.safe_dump({"model": {"backbone": {"class_path": class_path, "init_args": init_args},
                                              "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}}))
    return path


def reload(config_file: Path):
    backbone = instantiate_class((), yaml.safe_load(config_file.read_text())["model"]["backbone"])
    return backbone.build(backbone.tokenizer()).eval()


def logits(network, tokens) -> torch.Tensor:
    batch = one_sample(tokens, [40, 41, 42], [43, 44, 45])
    mask = blank_infilling_mask(batch["segment_ids"], batch["part_a"])
    with torch.no_grad():
        return network(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask).logits


def check_round_trip(ckpt: Path, out: Path, base: Path, root: Path) -> None:
    restored = restore(ckpt)
    tokens = GLMTokens.of(restored.tokenizer)
    trained = logits(restored.network, tokens)
    written = export_recommender(ckpt, out)  # what `recsys-lightning export` writes
    assert written == [out.resolve(), out.resolve() / "adapter"]
    assert (out / "backbone.yaml").is_file() and any(out.glob("*.safetensors"))
    torch.testing.assert_close(logits(reload(out / "backbone.yaml"), tokens), trained, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits(reload(out / "adapter" / "backbone.yaml"), tokens), trained,
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export(ckpt, out)  # an existing export is never overwritten
    check_recommender(ckpt, out, base, root)


def check_recommender(ckpt: Path, out: Path, base: Path, root: Path) -> None:
    """The export recommends as the checkpoint does with neither the pretrained base nor the dataset present; an
    export that cannot read the dataset leaves no folder behind."""
    direct = Recommender.from_checkpoint(ckpt)
    users = direct.users[:3]
    expected = direct.recommend_batch(users=users, k=5)
    root.rename(root.with_name("data-gone"))
    with pytest.raises(DataError, match="dataset folder .* does not exist"):
        export_recommender(ckpt, out.with_name("failed"))
    assert not out.with_name("failed").exists()
    base.rename(base.with_name("base-gone"))
    exported = Recommender.from_pretrained(out)
    for got, want in zip(exported.recommend_batch(users=users, k=5), expected):
        assert [item for item, _ in got] == [item for item, _ in want]
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-4)


def test_native_glm_lora_export_round_trip(tmp_path, tiny_reviews):
    root = Path(shutil.copytree(tiny_reviews, tmp_path / "reviews"))  # moved away once exported
    base = tmp_path / "glm-base"
    write_gpt2_vocab(base)
    write_glm_tokenizer_config(base)
    from recsys_lightning.model.backbones import NativeGLM

    vocab = len(NativeGLM(checkpoint=str(base)).tokenizer())
    torch.manual_seed(0)
    write_thudm_checkpoint(base, GLMModel(GLMConfig(vocab_size=vocab, hidden_size=32, num_layers=2,
                                                    num_attention_heads=4, max_sequence_length=257)))
    config = backbone_yaml(tmp_path, "recsys_lightning.model.backbones.NativeGLM", checkpoint=str(base),
                           hidden_dropout=0.0, attention_dropout=0.0)
    # rows within the base's 257 positions (a longer data.max_length is refused before training)
    cli("fit", tmp_path, root, config, extra=("--model.lr", "0.05", "--data.max_length", "256",
                                              "--data.pack_length", "256"))
    check_round_trip(tmp_path / "ckpt" / "last.ckpt", tmp_path / "export", base, root)
    merged = yaml.safe_load((tmp_path / "export" / "backbone.yaml").read_text())["model"]["backbone"]["init_args"]
    assert merged["checkpoint"] == str((tmp_path / "export").resolve()) and merged["adapter"] is None
    assert json.loads((tmp_path / "export" / "config.json").read_text())["num_layers"] == 2


def test_hf_llama_lora_export_round_trip(tmp_path, tiny_reviews):
    root = Path(shutil.copytree(tiny_reviews, tmp_path / "reviews"))  # moved away once exported
    write_pretrained(tmp_path / "llama-base")
    config = backbone_yaml(tmp_path, "recsys_lightning.model.hf_glm.HFCausalLM", model=str(tmp_path / "llama-base"),
                           max_block_positions=640)  # blanks as long as a row
    cli("fit", tmp_path, root, config, extra=("--model.lr", "0.05"))
    # the backbone's tokenizer (not the checkpoint's string) decodes, and matches the checkpoint's fingerprint
    cli("test", tmp_path, root, config, extra=("--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")))
    check_round_trip(tmp_path / "ckpt" / "last.ckpt", tmp_path / "export", tmp_path / "llama-base", root)
    card = (tmp_path / "export" / "README.md").read_text()  # the model card has the test run's metrics
    assert "| sequential | hr@10 |" in card and "HFCausalLM" in card
    assert (tmp_path / "export" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "export" / "adapter" / "block_position_embeddings.safetensors").is_file()


def test_demo_fits_and_tests_with_the_tiny_llama_config(tmp_path, tiny_reviews):
    llama = CONFIGS / "backbones" / "llama_tiny.yaml"
    cli("fit", tmp_path, tiny_reviews, llama)
    cli("test", tmp_path, tiny_reviews, llama, extra=("--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")))
    results = max((tmp_path / "logs").glob("version_*/results.json"), key=lambda p: p.stat().st_mtime)
    metrics = json.loads(results.read_text())["metrics"]["sequential"]
    assert 0.0 <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1.0
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert "network.block_position_embeddings.weight" in state
    assert any(k.startswith("network.model.model.layers.0.self_attn.q_proj") for k in state)


def test_a_backbones_own_tokenizer_gets_back_the_item_tokens_training_added(tmp_path):
    from recsys_lightning.model.hf_glm import HFCausalLM

    write_pretrained(tmp_path / "llama-base")
    trained = HFCausalLM(model=str(tmp_path / "llama-base")).tokenizer()
    trained.add_tokens(["<item_2>", "<item_1>"])  # atomic item ids, as the data module adds them
    saved = trained.backend_tokenizer.to_str()  # what a checkpoint keeps (`tokenizer_identity`)
    fresh = HFCausalLM(model=str(tmp_path / "llama-base")).tokenizer()
    assert len(fresh) == len(trained) - 2
    add_item_tokens(fresh, saved)
    add_item_tokens(fresh, saved)  # tokens already there are not added twice
    assert len(fresh) == len(trained)
    items = ["<item_2>", "<item_1>"]
    assert fresh.convert_tokens_to_ids(items) == trained.convert_tokens_to_ids(items)
