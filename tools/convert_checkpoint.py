"""Convert a reference (official Volt / Pointcept) checkpoint into a volt checkpoint.

  python tools/convert_checkpoint.py --kind volt   --input model_best.pth --output volt_s_scannet.pt
  python tools/convert_checkpoint.py --kind spunet --input scannet_unet_teacher.pth --output teacher.pt

Input: a `torch.save` file holding `state_dict` (or `ema_state_dict` with --ema, or a bare state_dict), keys
optionally prefixed `module.` (DDP). It is read with weights_only=True, so it cannot run code; NumPy scalars
(e.g. a saved best metric) are the only non-tensor objects allowed.
- volt:   `backbone.*` -> volt.models.convert (our VolumeTransformer keys); `seg_heads.<c>.*` and
          `distill_heads.<c>.*` are kept; a single `seg_head.*` becomes `seg_heads.<--condition>.*`.
- spunet: teacher (SpUNet-v1m1) keys -> volt.models.sparse_unet's converter under `backbone.*`; a joint
          teacher's `seg_heads.<c>.*` are kept.
Any other key is an error (nothing is dropped silently). Output: our checkpoint (volt.engine.checkpoint)
with the config from --config-json (a JSON file, plain dict) and, under `meta`, the source and the
per-condition class counts read from the heads. Load it with `load_state_strict(Segmentor(...), ckpt["model"])`
or, for a teacher, `volt.engine.checkpoint.load_teacher`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from volt.engine.checkpoint import load_weights_only, save_checkpoint
from volt.errors import DataError

HEAD_PREFIXES = ("seg_heads.", "distill_heads.")


def _numpy_scalar_globals() -> list:
    # Pointcept saves metrics such as best_metric_value as NumPy scalars; allow those data-only types,
    # under both the NumPy 1 and NumPy 2 module names, and nothing else.
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *(type(np.dtype(t)) for t in ("f2", "f4", "f8", "i4", "i8", "u1", "b1"))]


def read_reference_state(path: Path, ema: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict with `module.` stripped, the key it came from)."""
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
        obj = load_weights_only(path)
    key = "ema_state_dict" if ema else "state_dict"
    if isinstance(obj, dict) and key in obj:
        state = obj[key]
    elif isinstance(obj, dict) and not ema and obj and all(torch.is_tensor(v) for v in obj.values()):
        state, key = obj, "<root>"
    else:
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(path, f"no '{key}' in the checkpoint (found {found})")
    out = {}
    for name, value in state.items():
        while name.startswith("module."):
            name = name[len("module."):]
        if not torch.is_tensor(value):
            raise DataError(path, f"state entry '{name}' is a {type(value).__name__}, not a tensor")
        out[name] = value
    return out, key


def _heads(rest: dict[str, torch.Tensor], condition: str, path: Path) -> dict[str, torch.Tensor]:
    heads, unknown = {}, []
    for name, value in rest.items():
        if name.startswith("seg_head."):
            heads[f"seg_heads.{condition}.{name[len('seg_head.'):]}"] = value
        elif name.startswith(HEAD_PREFIXES) and name.count(".") == 2:
            heads[name] = value
        else:
            unknown.append(name)
    if unknown:
        raise DataError(path, f"keys this converter does not know (refusing to drop them): {sorted(unknown)}")
    return heads


def _num_classes(state: dict[str, torch.Tensor], prefix: str) -> dict[str, int]:
    return {
        k.split(".")[1]: int(v.shape[0]) for k, v in state.items() if k.startswith(prefix) and k.endswith(".weight")
    }


def convert(kind: str, ref: dict[str, torch.Tensor], condition: str, path: Path) -> dict[str, torch.Tensor]:
    """Reference state (no `module.`) -> our Segmentor-style state: backbone.* + seg_heads.* (+ distill_heads.*)."""
    if kind == "volt":
        from volt.models.convert import convert_reference_state_dict, split_reference_checkpoint

        backbone, rest = split_reference_checkpoint(ref)
        ours = {f"backbone.{k}": v for k, v in convert_reference_state_dict(backbone).items()}
    elif kind == "spunet":
        from volt.models.sparse_unet import convert_reference_state_dict

        rest = {k: v for k, v in ref.items() if k.startswith((*HEAD_PREFIXES, "seg_head."))}
        backbone = {k: v for k, v in ref.items() if k not in rest}
        ours = {f"backbone.{k}": v for k, v in convert_reference_state_dict(backbone).items()}
    else:
        raise ValueError(f"kind must be 'volt' or 'spunet', got {kind!r}")
    ours.update(_heads(rest, condition, path))
    seg, distill = _num_classes(ours, "seg_heads."), _num_classes(ours, "distill_heads.")
    if distill and distill != seg:
        raise DataError(path, f"distill heads {distill} do not match seg heads {seg}")
    return ours


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", required=True, choices=("volt", "spunet"))
    ap.add_argument("--input", required=True, type=Path, help="reference checkpoint (.pth)")
    ap.add_argument("--output", required=True, type=Path, help="our checkpoint (.pt, or .safetensors)")
    ap.add_argument("--config-json", type=Path, help="JSON file with the model config to store (plain dict)")
    ap.add_argument("--ema", action="store_true", help="convert 'ema_state_dict' instead of 'state_dict'")
    ap.add_argument("--condition", default="Default", help="condition name for a single 'seg_head' (default: Default)")
    args = ap.parse_args(argv)

    config = {}
    if args.config_json is not None:
        try:
            config = json.loads(args.config_json.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(args.config_json, f"cannot read the config JSON ({exc})") from exc
        if not isinstance(config, dict):
            raise DataError(args.config_json, "the config JSON must hold an object")
    ref, key = read_reference_state(args.input, ema=args.ema)
    state = convert(args.kind, ref, args.condition, args.input)
    meta = {
        "converted_from": args.input.name,
        "kind": args.kind,
        "source_key": key,
        "num_classes": _num_classes(state, "seg_heads."),
        "distill_heads": any(k.startswith("distill_heads.") for k in state),
    }
    save_checkpoint(args.output, state, config, meta=meta)
    print(f"{args.input} -> {args.output}: {len(state)} tensors, heads {meta['num_classes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
