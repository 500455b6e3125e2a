"""Every shipped config is built: alone, as dataset config + method overlays + hardware overlay, and as every
`recsys-lightning fit|validate|test|predict` command the README, docs and config headers give. Without the real
data: the CLI parses and resolves the composition (`--print_config`) and the data module builds its task families,
which checks each family's options (the transition prior's spec included); nothing is read or trained."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml

from recsys_lightning.cli import main
from recsys_lightning.pipeline.datamodule import RecDataModule, TaskSpec

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "lightning_configs"
DATASETS = ["beauty", "toys", "yelp"]
# Method overlays in the order they compose (each after the ones before it in its chain).
CHAINS = [
    ["recsysllm"],
    ["recsysllm", "causal"],
    ["recsysllm", "causal", "causal_catalog"],
    ["recsysllm", "causal", "direct_causal"],
    ["recsysllm", "causal", "ablations/causal_text_only"],
    ["recsysllm", "causal", "ablations/causal_text_only", "ablations/causal_catalog_only"],
    ["recsysllm", "ablations/text_only"],
    ["recsysllm", "ablations/no_masking"],
    ["recsysllm", "ablations/no_multitask"],
    ["id_only"],
    ["id_only", "direct_id_only"],
    ["id_only_causal"],
    ["id_only_causal", "direct_id_only_causal"],
    ["id_only_causal", "id_causal_masking_direct"],
    ["id_only_causal", "id_causal_masking_direct", "ablations/id_causal_direct_only"],
    ["id_only_causal", "id_causal_masking_direct", "ablations/id_causal_masking_only"],
    ["id_only_causal", "id_causal_masking_direct", "ablations/id_causal_direct_windows"],
    ["id_only_causal", "crops_prior"],
    ["id_only_causal", "prior"],
    ["id_only_causal", "refit"],
    ["id_only_causal", "crops_prior", "refit"],
    ["id_only_causal", "prior", "refit"],
    ["families"],
]
HARDWARE = [["cpu"], ["gpu"], ["cpu", "cpu_bf16"]]
COMMAND = re.compile(r"recsys-lightning (fit|validate|test|predict) ")


def resolved(argv: list[str]) -> dict:
    """The configuration the CLI resolves for `argv` (a subcommand and its arguments), without running it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([*argv, "--print_config"])
    assert done.value.code == 0, argv
    return yaml.safe_load(out.getvalue())


def build_families(config: dict) -> RecDataModule:
    data = dict(config["data"])
    tasks = [TaskSpec(**spec) for spec in data.pop("tasks") or []] or None
    return RecDataModule(tasks=tasks, **data)


def compose(dataset: str, chain: list[str], hardware: list[str]) -> list[str]:
    files = [f"{dataset}.yaml", *(f"method/{m}.yaml" for m in chain), *(f"hardware/{h}.yaml" for h in hardware)]
    return [arg for name in files for arg in ("--config", str(CONFIGS / name))]


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_parses_alone(path):
    resolved(["fit", "--config", str(path)])


def test_every_overlay_is_composed_below():
    method = {str(p.relative_to(CONFIGS / "method"))[:-5] for p in (CONFIGS / "method").rglob("*.yaml")}
    assert method == {m for chain in CHAINS for m in chain}
    assert {p.stem for p in (CONFIGS / "hardware").glob("*.yaml")} == {h for hw in HARDWARE for h in hw}


@pytest.mark.parametrize("chain", CHAINS, ids="+".join)
@pytest.mark.parametrize("dataset", DATASETS)
def test_dataset_method_hardware_compose(dataset, chain):
    for hardware in HARDWARE if dataset == "beauty" and len(chain) == 1 else HARDWARE[:1]:
        config = resolved(["fit", *compose(dataset, chain, hardware)])
        assert config["data"]["root"] == f"data/{dataset}" and config["data"]["format"] == "s3rec"
        # runs/<dataset>/<overlay>/version_N/: metrics.csv, TensorBoard events, checkpoints/
        loggers = config["trainer"]["logger"]
        assert [lg["class_path"].rsplit(".", 1)[1] for lg in loggers] == ["CSVLogger", "TensorBoardLogger"]
        assert {lg["init_args"]["save_dir"] for lg in loggers} == {"${trainer.default_root_dir}"}
        assert len({lg["init_args"]["name"] for lg in loggers}) == 1
        assert loggers[0]["init_args"]["name"] in {m.split("/")[-1] for m in chain}
        assert config["trainer"]["default_root_dir"] == f"runs/{dataset}" and config["checkpoint"]["dirpath"] is None
        build_families(config)


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every CLI command in the README, docs/ and config headers, continuation lines joined."""
    found = []
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(CONFIGS.rglob("*.yaml"))]
    for path in files:
        lines = [re.sub(r"^\s*#?\s*", "", line) for line in path.read_text().splitlines()]
        for i, line in enumerate(lines):
            match = COMMAND.search(line)
            if not match:
                continue
            command = line[match.start():]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i]
            command = command.split(" # ")[0].strip().strip("`")
            if "<" in command or "PATH" in command or "/path/to" in command:
                continue  # a template the reader fills in
            found.append((f"{path.relative_to(ROOT)}:{i + 1}", shlex.split(command)[1:]))
    return found


@pytest.mark.parametrize("where,argv", documented_commands(), ids=[w for w, _ in documented_commands()])
def test_documented_commands_parse(where, argv):
    config = resolved([arg if not arg.startswith("lightning_configs/") else str(ROOT / arg) for arg in argv])
    build_families(config)
    assert "../shared" not in " ".join(argv), where


def test_configs_and_docs_name_no_developer_paths():
    for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *CONFIGS.rglob("*.*")]:
        assert "../shared" not in path.read_text(), path
        if path.suffix == ".yaml":
            assert not re.search(r"#.*\.0\d{3}", path.read_text()), f"{path}: result numbers in a comment"
