"""Docs, configs and prompts name only files that exist: repository paths in their text, and Markdown links."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_DIRS = "lightning_configs|prompts|scripts|recsys_lightning|tasks|tests|benchmarks|docs"
REPO_PATH = re.compile(rf"(?<![\w/.-])(?:{TOP_DIRS})/[\w./-]*\w\.(?:yaml|py|md|sh|sbatch|json|svg|gz)\b")
MD_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile"]
    for folder, patterns in {"docs": ["*.md"], "lightning_configs": ["*.yaml", "*.sh", "*.sbatch"],
                             "prompts": ["*.yaml"]}.items():
        files += [p for pattern in patterns for p in sorted((ROOT / folder).rglob(pattern))]
    return files


@pytest.mark.parametrize("path", _text_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_named_files_exist(path: Path) -> None:
    text = path.read_text()
    missing = [m for m in REPO_PATH.findall(text) if not (ROOT / m).exists()]
    if path.suffix == ".md":
        missing += [link for link in MD_LINK.findall(text)
                    if "://" not in link and not link.startswith("mailto:") and not (path.parent / link).exists()]
    assert not missing, f"{path.relative_to(ROOT)} names files that do not exist: {missing}"


# Scripts users could run before issue 47, and what the README names in their place.
REPLACED = {"transition_baseline.py": "benchmarks/transition_baseline.py", "prior_sweep.sh": "recsys-lightning validate",
            "keep_result.py": "results.json", "plot_curves.py": "metrics.csv", "gpu_yelp_seeds.sh": "--seed_everything"}


def test_the_readme_opens_with_the_two_commands_and_stays_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert any(line.startswith("make demo ") for line in lines[:40]) and any(line.startswith("make test ") for line in lines[:40])
    assert len(lines) < 200
    assert len((ROOT / "docs" / "results.md").read_text().splitlines()) < 250


def test_the_readme_names_what_replaced_each_removed_script() -> None:
    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("Scripts that moved or went"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    for old, new in REPLACED.items():
        assert not (ROOT / "scripts" / old).exists()
        assert f"`{old}`" in paragraph and new in paragraph, old


def test_results_cite_only_kept_runs_and_keep_only_cited_ones() -> None:
    text = (ROOT / "docs" / "results.md").read_text() + (ROOT / "README.md").read_text()
    cited = {Path(link).name for link in MD_LINK.findall(text) if link.startswith(("results/", "docs/results/"))}
    kept = {p.name for p in (ROOT / "docs" / "results").iterdir()}
    assert cited <= kept
    assert kept - cited == {name for name in kept if name.startswith("h100_")}  # the README's benchmark JSON


def test_a_stale_path_is_caught() -> None:
    assert REPO_PATH.findall("see lightning_configs/quality/ablations/causal.yaml.") == [
        "lightning_configs/quality/ablations/causal.yaml"]
    assert REPO_PATH.findall("some/prompts/my_family.yaml") == []
