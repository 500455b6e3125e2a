"""Every backbone config combines with a dataset config and resolves to its backbone class."""

from __future__ import annotations

import pytest
import yaml

from recsys_lightning.cli import main
from recsys_lightning.builtin import builtin_dir

CONFIGS = builtin_dir("lightning_configs").parent / "lightning_configs"
EXPECTED = {"glm_tiny": "NativeGLM", "llama_tiny": "HFCausalLM", "glm_10b": "NativeGLM", "qwen2.5": "HFCausalLM",
            "minilm": "HFEncoder"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_backbone_config_combines_with_the_demo_config(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(CONFIGS / "demo.yaml"), "--config", str(CONFIGS / "backbones" / f"{name}.yaml"),
              "--print_config"])
    assert done.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["backbone"]["class_path"].endswith("." + EXPECTED[name])
    assert config["data"]["tasks"][0]["name"] == "sequential"  # the dataset side is the demo's


def test_every_backbone_config_is_covered():
    assert {p.stem for p in (CONFIGS / "backbones").glob("*.yaml")} == set(EXPECTED)
