"""Checkpoint files: our format, atomic save, code-free load, and strict state loading.

Format (a `torch.save` dict readable with `torch.load(weights_only=True)`):
  format "volt-checkpoint", format_version 1, model (state_dict), config (plain dict), versions
  {volt, torch}, and optionally optimizer / scheduler / scaler / ema (state dicts), step, epoch, rng
  (`capture_rng()`), meta (plain dict, e.g. where a converted checkpoint came from).
A `.safetensors` path stores the model tensors only, with config/versions/meta as JSON metadata
(needs the optional `safetensors` package, imported lazily).

`load_state_strict` never loads partially in silence: any missing or unexpected key or shape mismatch
raises a DataError listing them, except the prefixes the caller names in `allow_missing` /
`ignore_unexpected` (e.g. drop `seg_heads.` when fine-tuning on another label set). VOLT_SPEC.md §5 item 4.
`load_teacher` builds the frozen distillation teacher from a teacher checkpoint (its path or its loaded dict).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import volt
from volt.data.io import atomic_write
from volt.errors import DataError, require

FORMAT = "volt-checkpoint"
FORMAT_VERSION = 1
_OPTIONAL = ("optimizer", "scheduler", "scaler", "ema", "step", "epoch", "rng", "meta")


def _state(obj: Any) -> Any:
    # Modules/optimizers/schedulers/scalers are stored as their state_dict.
    return obj.state_dict() if hasattr(obj, "state_dict") and callable(obj.state_dict) else obj


_LEAVES = (str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)


def _check_plain(obj: Any, where: str) -> None:
    """Fail at save time (not at load time) on values weights_only loading would refuse."""
    # Exact types: a str/dict subclass (e.g. torch's TorchVersion) pickles as a class reference.
    if type(obj) in _LEAVES or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            _check_plain(key, f"{where} key")
            _check_plain(value, f"{where}.{key}")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: {type(obj).__name__} cannot be stored in a weights-only checkpoint; use plain data")


def _plain_config(config: Any) -> dict:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or a dataclass, got {type(config).__name__}")
    return dict(config)


def versions() -> dict[str, str]:
    return {"volt": str(volt.__version__), "torch": str(torch.__version__)}  # TorchVersion is not plain


def capture_rng() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states, as weights-only-safe plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping) -> None:
    """Inverse of capture_rng (CUDA states are restored only when CUDA is available)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, model: nn.Module | Mapping, config: Any = None, **optional: Any) -> Path:
    """Write our checkpoint atomically (temporary file in the same folder, then os.replace).

    `model` is a module or a state_dict; `optional` takes the keys listed in the module docstring.
    """
    path = Path(path)
    unknown = sorted(set(optional) - set(_OPTIONAL))
    if unknown:
        raise TypeError(f"unknown checkpoint field(s) {unknown}; known: {list(_OPTIONAL)}")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": dict(_state(model)),
        "config": _plain_config(config),
        "versions": versions(),
    }
    for key, value in optional.items():
        if value is not None:
            payload[key] = _state(value)
    for key, value in payload.items():
        _check_plain(value, key)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            if path.suffix == ".safetensors":
                f.write(_safetensors_bytes(payload))
            else:
                torch.save(payload, f)

    return atomic_write(path, write, durable=True)  # readers see the old or the new file, never half of one


def load_weights_only(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True; a file that needs pickled Python objects is refused (DataError)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL (\S+)", text)
        if found is None:  # not an object reference: a corrupt file or not a torch.save file at all
            detail = text.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].strip()
            raise DataError(path, f"not a readable torch checkpoint ({detail or type(exc).__name__})") from exc
        raise DataError(
            path,
            f"the file holds pickled Python objects (first: {found.group(1)}); weights-only loading refuses "
            "them because unpickling can execute code. Re-save it as plain tensors/dicts from a trusted "
            "environment (tools/convert_checkpoint.py for reference checkpoints).",
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise DataError(path, f"not a readable torch checkpoint ({exc})") from exc


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read one of our checkpoints (.pt or .safetensors); never executes code from the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path, map_location)
    payload = load_weights_only(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(
            path,
            "not a volt checkpoint (no 'format': 'volt-checkpoint'); reference checkpoints must be converted "
            "with tools/convert_checkpoint.py",
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(
            path, f"checkpoint format {payload['format_version']} is newer than this volt reads ({FORMAT_VERSION})"
        )
    return payload


def _prefixed(key: str, prefixes: Iterable[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def _listing(label: str, keys: list[str], limit: int = 50) -> str:
    shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
    return f"{len(keys)} {label}: [{shown}]"


def load_state_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    allow_missing: Iterable[str] = (),
    ignore_unexpected: Iterable[str] = (),
    source: str | os.PathLike | None = None,
) -> dict[str, list[str]]:
    """Load `state` into `module`, refusing any key or shape difference not explicitly allowed.

    allow_missing: key prefixes of the module that may be absent from `state` (they keep their values).
    ignore_unexpected: key prefixes in `state` the module lacks, to be dropped.
    Returns {"missing": [...], "unexpected": [...]} of the tolerated keys, for logging.
    """
    allow_missing, ignore_unexpected = tuple(allow_missing), tuple(ignore_unexpected)
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    bad_missing = [k for k in missing if not _prefixed(k, allow_missing)]
    bad_unexpected = [k for k in unexpected if not _prefixed(k, ignore_unexpected)]
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if bad_missing or bad_unexpected or mismatched:
        problems = []
        if bad_missing:
            problems.append(_listing("missing keys", bad_missing))
        if bad_unexpected:
            problems.append(_listing("unexpected keys", bad_unexpected))
        if mismatched:
            problems.append(_listing("shape mismatches", mismatched))
        raise DataError(
            source,
            f"state does not match {type(module).__name__}; refusing a partial load. " + "; ".join(problems)
            + ". Pass allow_missing=/ignore_unexpected= key prefixes for a deliberate partial load.",
        )
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def load_teacher(checkpoint: str | os.PathLike | Mapping[str, Any], model: nn.Module,
                 condition_heads: nn.Module | None = None, *, source: str | os.PathLike | None = None):
    """A FrozenTeacher from our teacher checkpoint (keys `backbone.*`, plus `seg_heads.*` for a joint teacher).

    `checkpoint` is its path or the dict `load_checkpoint` already read from it (then `source`, its path, names
    it in errors). Loaded strictly; a student checkpoint's `distill_heads.*` are ignored so a student can also
    teach.
    """
    from volt.models.distill import FrozenTeacher

    holder = nn.Module()  # gives the keys the same prefixes as in a Segmentor checkpoint
    holder.backbone = model
    if condition_heads is not None:
        holder.seg_heads = condition_heads
    if not isinstance(checkpoint, Mapping):
        checkpoint, source = load_checkpoint(checkpoint), checkpoint
    load_state_strict(holder, checkpoint["model"], ignore_unexpected=("distill_heads.",), source=source)
    return FrozenTeacher(model, condition_heads)


def _safetensors_bytes(payload: dict) -> bytes:
    st = require("safetensors.torch", "safetensors", "Saving a .safetensors checkpoint")
    extra = sorted(k for k in payload if k in _OPTIONAL and k != "meta")
    if extra:
        raise TypeError(f".safetensors holds model weights only; save {extra} to a .pt checkpoint")
    metadata = {k: json.dumps(payload[k]) for k in ("config", "versions", "meta") if k in payload}
    metadata["format"] = FORMAT
    metadata["format_version"] = str(FORMAT_VERSION)
    # clone: safetensors refuses tensors that share storage (e.g. tied weights)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in payload["model"].items()}
    return st.save(tensors, metadata=metadata)


def _load_safetensors(path: Path, map_location: Any) -> dict:
    safetensors = require("safetensors", "safetensors", "Loading a .safetensors checkpoint")
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        with safetensors.safe_open(str(path), framework="pt", device=device) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:  # the library raises its own error types
        raise DataError(path, f"not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != FORMAT:
        raise DataError(path, "not a volt checkpoint (safetensors metadata lacks format 'volt-checkpoint')")
    payload: dict[str, Any] = {"format": FORMAT, "format_version": int(metadata["format_version"]), "model": tensors}
    for key in ("config", "versions", "meta"):
        if key in metadata:
            payload[key] = json.loads(metadata[key])
    payload.setdefault("config", {})
    return payload
