"""Shared test fixtures: where the real sample data and reference fixtures live, and device lists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _locate(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else (ROOT / default).resolve()


SHARED_DATA = _locate("VOLT_SHARED_DATA", "../shared/data")
FIXTURES = _locate("VOLT_FIXTURES", "../shared/fixtures")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set VOLT_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {FIXTURES} (set VOLT_FIXTURES)")
    return FIXTURES


def fixture_file(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not found (set VOLT_FIXTURES)")
    return path


@pytest.fixture(scope="session")
def demo_processed(tmp_path_factory) -> Path:
    """The demo's synthetic data, generated and preprocessed once per session (no training stages)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_tool", ROOT / "tools" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = tmp_path_factory.getbasetemp() / "volt_demo"
    demo.prepare_data(out / "raw", out / "processed", 0, False)
    return out / "processed"
