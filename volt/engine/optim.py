"""Optimizer, learning-rate/momentum schedule and the AMP-aware optimizer step (VOLT_SPEC.md §1.3).

- `param_groups(model, weight_decay)`: two AdamW groups; parameters with ndim == 1 (norm weights, LayerScale)
  or a name ending in `.bias` get weight decay 0, everything else `weight_decay`.
- `build_optimizer(model, lr, weight_decay, betas)`: torch AdamW over those groups.
- `build_scheduler(optimizer, max_lr, total_steps, ...)`: torch's OneCycleLR with the reference settings:
  lr rises from max_lr/div_factor to max_lr over pct_start of the steps, then cos-anneals to
  max_lr/div_factor/final_div_factor; AdamW's β1 cycles inversely between 0.95 and 0.85 (cycle_momentum).
- `optimizer_step(optimizer, scaler, clip_grad) -> (stepped, grad_norm)`: step through the GradScaler;
  stepped=False when the step was skipped for inf/NaN gradients (fp16: the scaler's scale decreased; without
  the scaler: the total gradient norm is not finite, the grads are cleared and AdamW is not stepped, so
  neither its moments nor weight decay move the weights): the caller then must not step the scheduler nor
  update the EMA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim == 1 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[{params with decay, weight_decay}, {params without, 0.0}] over trainable parameters, in model order."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if no_weight_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas))


def warmup_fraction(pct_start: float, total_steps: int) -> float:
    """pct_start, raised so that warm-up spans at least 2 steps.

    torch's OneCycleLR divides by (pct_start·total_steps − 1) and fails with ZeroDivisionError when that
    product is exactly 1 (e.g. 20 steps at pct 0.05); short runs get a 2-step warm-up instead.
    """
    if total_steps < 4:
        raise ValueError(f"the one-cycle schedule needs at least 4 optimizer steps, got {total_steps}")
    return max(pct_start, 2.0 / total_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.05,
    div_factor: float = 10.0,
    final_div_factor: float = 1000.0,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> torch.optim.lr_scheduler.OneCycleLR:
    """One-cycle lr (cos) with β1 cycling; step it once per optimizer step that was not skipped."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=total_steps,
        pct_start=warmup_fraction(pct_start, total_steps),
        anneal_strategy="cos",
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum=True,  # for AdamW this cycles betas[0] (the reference keeps torch's default)
        base_momentum=base_momentum,
        max_momentum=max_momentum,
    )


def poly_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   power: float) -> torch.optim.lr_scheduler.LambdaLR:
    """lr·(1 − step/total)^power per optimizer step from the optimizer's lr; β1 stays as built (the instance
    task's schedule)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / max(total_steps, 1)) ** power)


def current_lr_beta1(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    group = optimizer.param_groups[0]
    return float(group["lr"]), float(group["betas"][0])


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   clip_grad: float | None = None) -> tuple[bool, float | None]:
    """Unscale, clip (optional), step and update the scaler. Returns (stepped, grad_norm or None).

    A skipped step is detected as the reference does with the fp16 scaler: the scale decreased in
    `scaler.update()`. Without the scaler (fp32/bf16) nothing would stop a NaN/inf gradient, so the step is
    skipped here when the total gradient norm is not finite.
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_norm = None
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad))
    if not scaler.is_enabled():
        # clip_grad_norm_ already returned the norm; otherwise one reduction (and sync) per optimizer step
        norm = grad_norm if grad_norm is not None else float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        if not math.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            return False, grad_norm
    scale_before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    stepped = not scaler.is_enabled() or scaler.get_scale() >= scale_before
    return stepped, grad_norm
