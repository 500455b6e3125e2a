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


def test_a_stale_path_is_caught() -> None:
    assert REPO_PATH.findall("see lightning_configs/quality/ablations/causal.yaml.") == [
        "lightning_configs/quality/ablations/causal.yaml"]
    assert REPO_PATH.findall("some/prompts/my_family.yaml") == []
