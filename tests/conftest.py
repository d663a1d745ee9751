"""Shared test fixtures and helpers: real sample data and reference fixtures, device lists, extension backends."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _locate(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else (ROOT / default).resolve()


SHARED_DATA = _locate("VOLT_SHARED_DATA", "../shared/data")
FIXTURES = _locate("VOLT_FIXTURES", "../shared/fixtures")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Real scans under the `shared_data` folder that several test files read.
SCANNET_PLY = "scannet/scene0000_00/scene0000_00_vh_clean_2.ply"  # 81369-point mesh, colors
NUSCENES_SWEEP = "nuscenes/samples/LIDAR_TOP/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"


def load_tool(name: str) -> ModuleType:
    """tools/<name>.py imported as a fresh module (the tools are scripts, not a package), to call its main()."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    environ = dict(os.environ)
    try:
        spec.loader.exec_module(module)
    finally:  # a tool may set variables for its own process (bench.py: OMP_WAIT_POLICY); not for the tests'
        os.environ.clear()
        os.environ.update(environ)
    return module


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
    demo = load_tool("demo")
    out = tmp_path_factory.getbasetemp() / "volt_demo"
    demo.prepare_data(out / "raw", out / "processed", 0, False)
    return out / "processed"


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (restored after): tiny ops on a shared CPU run faster and far steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def need_ext(op: str, device: str) -> None:
    """Skip unless the compiled extension has a kernel for `op` on `device`."""
    from volt.ops import _ext

    if not _ext.has_kernel(op, device):
        pytest.skip(f"the extension has no {op} kernel for {device} ({_ext.ext_info()['reason']})")


def use_backend(monkeypatch: pytest.MonkeyPatch, backend: str, op: str, device: str) -> None:
    """Select VOLT_OPS=`backend` for this test; "ext" skips when `op` has no kernel on `device`."""
    if backend == "ext":
        need_ext(op, device)
    monkeypatch.setenv("VOLT_OPS", backend)


def assert_outputs_equal(names: tuple[str, ...], ext: tuple, ref: tuple) -> None:
    """A kernel's outputs equal the reference's, one by one: same device and dtype, torch.equal values."""
    for name, a, b in zip(names, ext, ref):
        assert a.device == b.device and a.dtype == b.dtype, name
        assert torch.equal(a, b), f"{name} differs: ext {a[:8].tolist()} ref {b[:8].tolist()}"
