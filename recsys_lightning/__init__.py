"""recsys-lightning: `from recsys_lightning import Recommender` (imported on first use, so the package's modules
load without the serving stack)."""

from __future__ import annotations

from typing import Any

__all__ = ["Recommender", "UnknownIdError", "FamilyNotTrainedError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from recsys_lightning.recommender import FamilyNotTrainedError, Recommender, UnknownIdError

        return {"Recommender": Recommender, "UnknownIdError": UnknownIdError,
                "FamilyNotTrainedError": FamilyNotTrainedError}[name]
    raise AttributeError(f"module 'recsys_lightning' has no attribute {name!r}")
