"""Where the shipped task families, prompts and configs live: the checkout's folders, or their copies in the wheel."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIRS = {"tasks": "builtin_tasks", "prompts": "builtin_prompts", "lightning_configs": "builtin_configs"}


def builtin_dir(kind: str) -> Path:
    """The shipped `tasks`, `prompts` or `lightning_configs` folder: in the checkout, else inside the wheel."""
    checkout = Path(__file__).resolve().parent.parent / kind
    if checkout.is_dir():
        return checkout
    return Path(__file__).resolve().parent / PACKAGE_DIRS[kind]
