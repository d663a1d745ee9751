"""Loads the compiled extension `volt._C` once and decides which op backend is active.

`VOLT_OPS=auto` (default) uses the extension when it loaded and has a kernel for the tensor's device,
else the pure-PyTorch reference; `VOLT_OPS=torch` forces the reference; `VOLT_OPS=ext` (or
`VOLT_REQUIRE_EXT=1`) requires the extension kernel and raises with the recorded reason otherwise.
`ext_info()` reports the mode, whether the extension loaded (or why not) and, per op, the devices that
have a compiled kernel; the tools log it once at start-up.
"""

from __future__ import annotations

import importlib
import os

import torch

_STATE: dict = {}
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


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
    key = _DISPATCH_KEYS.get(torch.device(device).type)
    if key is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"volt::{op}", key)
    except RuntimeError:  # the op's schema is not in this build of the extension
        return False


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
    """Which backend is active and why: mode, load status, and the devices with a kernel for each op."""
    st = _load()
    try:
        m = mode()
    except ValueError as exc:
        m = f"invalid ({exc})"
    ops: dict[str, list[str]] = {}
    if st["loaded"]:
        names = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("volt::"))
        ops = {op: [dev for dev in _DISPATCH_KEYS if has_kernel(op, dev)] for op in names}
    if m == "torch":
        why = "VOLT_OPS=torch forces the pure-PyTorch reference"
    elif st["loaded"]:
        why = "compiled extension volt._C loaded; ops without a kernel for a device use the reference there"
    else:
        why = f"extension not available ({st['error']}); using the pure-PyTorch reference"
    return {"mode": m, "extension_loaded": st["loaded"], "load_error": st["error"], "reason": why,
            "kernels": ops, "cuda_kernels": any("cuda" in devs for devs in ops.values())}
