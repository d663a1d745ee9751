"""Loads the compiled extension `volt._C` once and decides which op backend is active.

`VOLT_OPS=auto` (default) uses the extension when it loaded and has a kernel for the tensor's device,
else the pure-PyTorch reference; `VOLT_OPS=torch` forces the reference; `VOLT_OPS=ext` (or
`VOLT_REQUIRE_EXT=1`) requires the extension and raises with the recorded load error otherwise.
"""

from __future__ import annotations

import importlib
import os

import torch

_STATE: dict = {}


def _load() -> dict:
    if not _STATE:
        try:
            importlib.import_module("volt._C")
            _STATE.update(loaded=True, error=None)
        except ImportError as exc:
            _STATE.update(loaded=False, error=f"{type(exc).__name__}: {exc}")
    return _STATE


def has_ext() -> bool:
    return _load()["loaded"]


def mode() -> str:
    value = os.environ.get("VOLT_OPS", "auto").lower()
    if value not in ("auto", "ext", "torch"):
        raise ValueError(f"VOLT_OPS must be one of auto|ext|torch, got '{value}'")
    if value == "auto" and os.environ.get("VOLT_REQUIRE_EXT", "0") == "1":
        return "ext"
    return value


def has_kernel(op: str, device: torch.device | str) -> bool:
    """Whether the loaded extension registered `volt::<op>` for this device type."""
    if not has_ext():
        return False
    dispatch_key = {"cpu": "CPU", "cuda": "CUDA"}.get(torch.device(device).type)
    if dispatch_key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"volt::{op}", dispatch_key)


def use_ext(op: str, device: torch.device | str) -> bool:
    """Decide the backend for one call; raise when the extension is required but unusable."""
    m = mode()
    if m == "torch":
        return False
    if has_kernel(op, device):
        return True
    if m == "ext":
        why = _load()["error"] or f"the extension has no '{op}' kernel for device '{torch.device(device).type}'"
        raise RuntimeError(f"VOLT_OPS=ext / VOLT_REQUIRE_EXT=1 but volt's extension is unusable: {why}")
    return False


def ext_info() -> dict:
    """Which backend is active and why (logged by the tools at start-up)."""
    st = _load()
    m = mode() if os.environ.get("VOLT_OPS", "auto").lower() in ("auto", "ext", "torch") else "invalid"
    if m == "torch":
        why = "VOLT_OPS=torch forces the pure-PyTorch reference"
    elif st["loaded"]:
        why = "compiled extension volt._C loaded"
    else:
        why = f"extension not available ({st['error']}); using the pure-PyTorch reference"
    return {"mode": m, "extension_loaded": st["loaded"], "load_error": st["error"], "reason": why,
            "cuda_kernels": st["loaded"] and torch._C._dispatch_has_kernel_for_dispatch_key("volt::voxelize", "CUDA")
            if st["loaded"] else False}
