"""Slow results the end-to-end tiers share within one test session."""

from __future__ import annotations

from pathlib import Path


def shared_training_cache(tmp_path_factory) -> Path:
    """One training cache (features, checkpoints, finished attempts) for the session: the
    `dvc repro` and kfp.local runs train the same small ladder on the same data, so the
    second reuses the first's finished attempts, as a team sharing a cache would."""
    cache = tmp_path_factory.getbasetemp() / "training-cache"
    cache.mkdir(exist_ok=True)
    return cache
