"""Training-side machinery: checkpoints (and, beside it, the training loop, evaluation and metrics).

Public checkpoint API (volt/engine/checkpoint.py): save_checkpoint, load_checkpoint, load_weights_only,
load_state_strict, load_teacher, capture_rng, restore_rng.
"""

from volt.engine.checkpoint import (
    capture_rng,
    load_checkpoint,
    load_state_strict,
    load_teacher,
    load_weights_only,
    restore_rng,
    save_checkpoint,
)

__all__ = [
    "capture_rng",
    "load_checkpoint",
    "load_state_strict",
    "load_teacher",
    "load_weights_only",
    "restore_rng",
    "save_checkpoint",
]
