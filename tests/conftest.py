"""Shared fixtures: paths to the real data sets in ../shared/data and a per-test cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DLTRICKS_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Two cores in CI and two xdist workers: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoded-array caches go to a temporary folder, never next to the source data or into $HOME.
    cache = tmp_path_factory.getbasetemp() / "dltricks-cache"
    monkeypatch.setenv("DLTRICKS_CACHE", str(cache))
    monkeypatch.setenv("DLTRICKS_PROGRESS", "0")
