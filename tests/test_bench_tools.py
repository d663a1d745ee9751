"""Smoke tests of the model and training-step benchmarks (tools/bench_model.py, tools/bench_train_step.py).

Each benchmark runs once on tiny sizes (--quick) and its rows must be well formed; timings are not asserted.
The parts the numbers rest on are checked exactly: the reference-tokenizer baseline computes the same function
as our backbone, and the analytic FLOP count matches torch's matmul counter plus the attention actually run.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_model as bm
import bench_train_step as bts

from volt.ops.patchify import patchify


def _two_scene_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An indoor room and an outdoor sweep (padded to 6 channels) as one batch of two scenes."""
    a, b = bm.make_scene("indoor", 2500), bm.make_scene("outdoor", 1200, seed=1)
    grid = torch.cat([a["grid_coord"], b["grid_coord"]])
    feat = torch.cat([a["feat"], torch.cat([b["feat"], b["feat"][:, :2]], 1)])
    return grid, feat, torch.tensor([len(a["feat"]), len(feat)])


# The benchmarks' many small ops on 2 OpenMP threads crawl when another process holds a core (10x seen).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _finite(row: dict, *keys: str) -> bool:
    return all(isinstance(row[k], (int, float)) and math.isfinite(row[k]) and row[k] > 0 for k in keys)


@pytest.mark.parametrize("kind,channels", [("indoor", 6), ("outdoor", 4)])
def test_make_scene(kind, channels):
    scene = bm.make_scene(kind, 4000)
    v = scene["grid_coord"].shape[0]
    assert scene["feat"].shape == (v, channels) and scene["segment"].shape == (v,)
    assert scene["offset"].tolist() == [v] and int(scene["grid_coord"].min()) >= 0
    if kind == "indoor":  # the size is the target voxel count
        assert abs(v - 4000) < 0.1 * 4000
    else:  # the size is the point count before voxelizing
        assert 0 < v <= 4000


def test_reference_tokenizer_baseline_is_the_same_function():
    grid, feat, offset = _two_scene_batch()
    model = bm.build_volt("volt-tiny", in_channels=6).eval()
    with torch.no_grad():
        ours = model(grid, feat, offset)
        ref = bm.ReferenceTokenizerVolt(model)(grid, feat, offset)
    torch.testing.assert_close(ref, ours, rtol=1e-4, atol=1e-5)


def _grouped_mm_flops(a_shape, b_shape, *args, **kwargs) -> int:
    """aten._grouped_mm (the detokenizer): each row of the 2-D (M, K) operand meets one (K, N) matrix."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[-1]


def _slot_matmul_flops(x_shape, weight_shape, bias_shape, order_shape, *args, **kwargs) -> int:
    """volt::slot_matmul (the CPU tokenizer/detokenizer kernel): each of V voxels meets one (C_in, C_out) matrix."""
    return 2 * order_shape[0] * weight_shape[1] * weight_shape[2]


def test_volt_flops_matches_counted_matmuls_and_attention():
    grid, feat, offset = _two_scene_batch()
    model = bm.build_volt("volt-tiny", in_channels=6).eval()
    attention_flops = []
    original = bm.attention_module.attention

    def counting(q, k, v, cu_seqlens, max_seqlen, backend="auto"):
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        h, dh = q.shape[1], q.shape[2]
        attention_flops.append(sum(2 * n * n * dh * h * 2 for n in lengths))  # q·kᵀ and a·v, per head
        return original(q, k, v, cu_seqlens, max_seqlen, backend)

    bm.attention_module.attention = counting
    try:
        grouped = {torch.ops.aten._grouped_mm: _grouped_mm_flops}  # torch's counter has no formula for it
        if hasattr(torch.ops.volt, "slot_matmul"):  # nor for our kernel
            grouped[torch.ops.volt.slot_matmul] = _slot_matmul_flops
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=grouped) as counter:
            model(grid, feat, offset)
    finally:
        bm.attention_module.attention = original
    layout = patchify(grid, offset, patch_size=model.patch)
    tokens = (layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]).tolist()
    assert len(attention_flops) == len(model.blocks)
    dense_extra = 0  # the dense tokenizer (no extension) also multiplies the empty slots: T·S - V rows of C (S = p³)
    if model.tokenizer.path(grid.device) == "dense":
        empty_slots = layout.num_tokens * model.tokenizer.num_slots - grid.shape[0]
        dense_extra = 2 * empty_slots * model.in_channels * model.tokenizer.proj.out_features
    counted = counter.get_total_flops() + sum(attention_flops)
    assert bm.volt_flops(model, tokens, grid.shape[0]) + dense_extra == counted


def test_attention_timer_counts_and_restores():
    grid, feat, offset = _two_scene_batch()
    model = bm.build_volt("volt-tiny", in_channels=6).eval()
    original = bm.attention_module.attention
    with torch.no_grad(), bm.attention_timer(lambda: None) as total:
        model(grid, feat, offset)
    assert total[0] > 0.0
    assert bm.attention_module.attention is original


def test_bf16_peak_table():
    assert bm.bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert bm.bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert bm.bf16_peak("NVIDIA H200") == 989e12
    assert bm.bf16_peak("Tesla T4") is None


def test_cpu_memory_sees_an_allocation():
    mem = bm.Memory("cpu")
    mem.start()
    block = torch.ones(16 * 2**20)  # 64 MiB, written
    assert mem.peak() >= 48
    del block


def test_bench_model_quick_rows(capsys):
    rows = bm.run("cpu", quick=True)
    model = [r for r in rows if r["table"] == "model"]
    tok = [r for r in rows if r["table"] == "tokenize"]
    keys = {(r["scene"], r["impl"], r["phase"]) for r in model}
    assert len(model) == len(keys) == 8 and {r["scene"] for r in model} == set(bm.SCENES)
    assert len(tok) == 8
    for r in model:
        assert _finite(r, "ms", "best_ms", "voxels", "tokens", "tok_per_s", "tflops") and r["peak_mb"] >= 0
        assert (0.0 < r["attn_share"] <= 1.0) if r["phase"] == "forward" else r["attn_share"] is None
        assert r["mfu"] is None  # no bf16 peak on the CPU
        assert (r["speedup"] > 0) if r["impl"] == "volt" else r["speedup"] is None
    for r in tok:
        assert _finite(r, "ms", "best_ms", "voxels", "tokens")
        assert (r["speedup"] > 0) if r["impl"] == "volt" else r["speedup"] is None
    bm.print_rows(rows)
    out = capsys.readouterr().out
    assert bm.TITLES["model"] in out and bm.TITLES["tokenize"] in out and len(out.splitlines()) == 2 * (1 + 1 + 8 + 1)


def test_bench_train_step_quick_rows(capsys):
    rows = bts.run("cpu", quick=True)
    assert [(r["run"], r["mode"]) for r in rows] == [("demo_volt", "preloaded batches"),
                                                     ("demo_volt", "with loader (mean)"),
                                                     ("volt-tiny synthetic", "2 rooms, fp32")]
    for r in rows:
        assert r["table"] == "train" and _finite(r, "ms", "it_per_s", "voxels", "steps", "threads")
        assert r["it_per_s"] == pytest.approx(1000.0 / r["ms"])
    assert _finite(rows[2], "tflops") and rows[2]["mfu"] is None
    bm.print_rows(rows, bts.COLUMNS, bts.TITLES)
    assert bts.TITLES["train"] in capsys.readouterr().out
