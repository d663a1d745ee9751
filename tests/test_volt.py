"""Volt backbone: reference parity, tokenizer = the reference's buffer, detokenizer = the full product (outputs
and gradients), spconv-kernel conversion, batch isolation, no scene-size cap, forward/backward, parameter counts
of the presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, fixture_file, need_ext

from volt.errors import DataError
from volt.models import PRESETS, build_volt, convert_reference_state_dict, load_strict, volt_from_reference_config
from volt.models.convert import split_reference_checkpoint
from volt.models.tokenizer import Detokenizer, Tokenizer, detokenize_dense
from volt.ops._ext import has_kernel
from volt.ops.patchify import patchify


def random_scenes(sizes, extent=30, channels=6, seed=0, origin=(0, 0, 0)):
    """Concatenated scenes of unique random voxels: grid_coord (V, 3) int32, feat (V, C), offset (B,)."""
    g = torch.Generator().manual_seed(seed)
    coords = []
    for n in sizes:
        cells = torch.randperm(extent**3, generator=g)[:n]
        xyz = torch.stack((cells // extent**2, cells // extent % extent, cells % extent), dim=1)
        coords.append(xyz + torch.tensor(origin))
    grid = torch.cat(coords).int()
    feat = torch.randn(grid.shape[0], channels, generator=g)
    return grid, feat, torch.tensor(sizes).cumsum(0)


def lively(model):
    """Randomize weights and norm statistics so every output is O(1) (the init's outputs are ~1e-3)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim == 2:
                t.copy_(torch.randn(t.shape, generator=g) / t.shape[1] ** 0.5)
            elif name.endswith("weight"):
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
    return model


# ---------------------------------------------------------------- reference parity (fixture-driven)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_official_backbone(device):
    data = torch.load(fixture_file("volt_official_parity.pt"), weights_only=True, map_location="cpu")
    model = volt_from_reference_config(data["config"]).eval()
    load_strict(model, convert_reference_state_dict(data["state_dict"]), source="volt_official_parity.pt")
    inputs = data["inputs"]
    grid, feat = inputs["grid_coord"], inputs["feat"]
    if "offset" in inputs:
        order, offset = torch.arange(grid.shape[0]), inputs["offset"].long()
    else:  # scenes must be contiguous for us; the reference sorts by batch itself
        batch = inputs["batch"].long()
        order = torch.argsort(batch, stable=True)
        offset = torch.bincount(batch).cumsum(0)
    with torch.no_grad():
        out = torch.empty_like(data["output"])
        out[order] = model.to(device)(grid[order].to(device), feat[order].to(device), offset.to(device)).cpu()
    err = (out - data["output"]).abs().max().item()
    assert err <= 1e-4, f"max abs error {err:.3g} vs the reference output"


def test_strict_loading_reports_missing_and_unexpected_keys():
    model = build_volt("volt-tiny", in_channels=4)
    sd = model.state_dict()
    partial = {k: v for k, v in sd.items() if "q_norm" not in k}
    with pytest.raises(DataError, match="missing keys: blocks.0.attn.q_norm.bias"):
        load_strict(model, partial, source="ckpt.pth")
    with pytest.raises(DataError, match="unexpected keys: seg_head.weight"):
        load_strict(model, {**sd, "seg_head.weight": torch.zeros(3)}, source="ckpt.pth")
    with pytest.raises(DataError, match="shape mismatches: tokenizer.proj.bias"):
        load_strict(model, {**sd, "tokenizer.proj.bias": torch.zeros(5)}, source="ckpt.pth")
    load_strict(model, sd)


def test_checkpoint_prefixes_are_stripped_and_heads_kept_apart():
    sd = build_volt("volt-tiny", in_channels=4).state_dict()
    wrapped = {"state_dict": {**{f"module.backbone.{k}": v for k, v in sd.items()},
                              "module.seg_heads.0.weight": torch.zeros(2, 32)}}
    backbone, rest = split_reference_checkpoint(wrapped)
    assert set(rest) == {"seg_heads.0.weight"}
    assert set(convert_reference_state_dict(wrapped)) == set(sd)
    assert set(backbone) == set(sd)


# ---------------------------------------------------------------- tokenizer / detokenizer


def _layout_with_duplicates(channels=5, seed=3):
    grid, feat, _ = random_scenes([60, 45], extent=12, channels=channels, seed=seed)
    grid = torch.cat([grid, grid[:7]])  # 7 voxels duplicated in scene 1 (as after mixing)...
    feat = torch.cat([feat, torch.randn(7, channels)])
    order = torch.cat([torch.arange(60), torch.arange(105, 112), torch.arange(60, 105)])
    grid, feat = grid[order], feat[order]  # ...kept contiguous with their scene
    return grid, feat, torch.tensor([67, 112])


def reference_tokenize(feat, voxel2token, slot, num_tokens, proj):
    """The reference toolkit's tokenizer: dense [T, S, C] buffer by index assignment, flatten, Linear."""
    buf = feat.new_zeros(num_tokens, proj.in_features // feat.shape[1], feat.shape[1])
    buf[voxel2token, slot] = feat
    return proj(buf.flatten(1))


def test_tokenizer_is_the_reference_buffer_formulation():
    """Dense mode, distinct slots: bit-identical to the reference, outputs and gradients (feat, weight, bias)."""
    grid, feat, offset = random_scenes([150, 90], extent=14, channels=5, seed=8)
    layout = patchify(grid, offset, patch_size=5)
    tok = Tokenizer(5, 16, mode="dense")
    torch.nn.init.normal_(tok.proj.bias)
    t = layout.num_tokens
    feat_a, feat_b = feat.clone().requires_grad_(), feat.clone().requires_grad_()
    ours = tok(feat_a, layout.voxel2token, layout.slot, t)
    ref = reference_tokenize(feat_b, layout.voxel2token, layout.slot, t, tok.proj)
    assert torch.equal(ours, ref)
    grad_out = torch.randn_like(ours)
    grads_a = torch.autograd.grad(ours, [feat_a, tok.proj.weight, tok.proj.bias], grad_out)
    grads_b = torch.autograd.grad(ref, [feat_b, tok.proj.weight, tok.proj.bias], grad_out)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sizes", [[150, 90], [1], [6000, 5000]])
def test_tokenizer_kernel_equals_dense(sizes):
    """The fused CPU kernel (auto's choice in float32): outputs and gradients (feat, weight, bias) equal the dense
    buffer formulation up to rounding ([6000, 5000]: several token blocks)."""
    need_ext("slot_matmul", "cpu")
    grid, feat, offset = random_scenes(sizes, extent=40 if sum(sizes) > 1000 else 14, channels=5, seed=len(sizes))
    layout = patchify(grid, offset, patch_size=5)
    kernel, dense = Tokenizer(5, 16), Tokenizer(5, 16, mode="dense")
    torch.nn.init.normal_(kernel.proj.bias)
    dense.load_state_dict(kernel.state_dict())
    assert kernel.path(feat.device) == "kernel" and dense.path(feat.device) == "dense"
    results = []
    for tok in (kernel, dense):
        leaf = feat.clone().requires_grad_()
        out = tok(leaf, layout.voxel2token, layout.slot, layout.num_tokens)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        results.append((out, *torch.autograd.grad(out, [leaf, tok.proj.weight, tok.proj.bias], grad_out)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="Tokenizer mode must be one of"):
        Tokenizer(5, 16, mode="grouped")


@pytest.mark.parametrize("mode", ["auto", "dense"])
def test_duplicate_voxels_are_summed(mode):
    grid = torch.tensor([[1, 2, 3], [1, 2, 3], [7, 0, 0]], dtype=torch.int32)
    feat = torch.tensor([[1.0], [2.0], [4.0]])
    layout = patchify(grid, torch.tensor([3]), patch_size=5)
    tok = Tokenizer(1, 2, mode=mode)
    out = tok(feat, layout.voxel2token, layout.slot, layout.num_tokens)
    slot = 1 * 25 + 2 * 5 + 3
    torch.testing.assert_close(out[0], tok.proj.bias + 3.0 * tok.proj.weight[:, slot])
    torch.testing.assert_close(out[1], tok.proj.bias + 4.0 * tok.proj.weight[:, 2 * 25])


def _detokenize_both(det, tokens, layout):
    """Grouped-GEMM detokenizer and the dense full product on cloned inputs: outputs and the gradients
    of tokens, weight and bias for one random output gradient."""
    tok_a, tok_b = tokens.clone().requires_grad_(), tokens.clone().requires_grad_()
    params = [det.proj.weight, det.bias]
    ours = det(tok_a, layout.voxel2token, layout.slot)
    dense = detokenize_dense(tok_b, layout.voxel2token, layout.slot, det.proj.weight, det.bias)
    grad_out = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1)).to(ours)
    grads_a = torch.autograd.grad(ours, [tok_a, *params], grad_out)
    grads_b = torch.autograd.grad(dense, [tok_b, *params], grad_out.to(dense.dtype))
    return (ours, *grads_a), (dense, *grads_b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", [[60, 45], [1], [400, 3, 250]])
def test_detokenizer_equals_full_product(sizes, device):
    """Outputs and gradients of the grouped GEMM (forced: on CUDA float32 is torch's per-group fallback) equal
    the reference's full product (few voxels: most slot groups are empty; [1]: one voxel, 124 empty groups)."""
    grid, _, offset = random_scenes(sizes, extent=12, seed=len(sizes))
    layout = patchify(grid.to(device), offset.to(device), patch_size=5)
    det = Detokenizer(8, mode="grouped").to(device)
    torch.nn.init.normal_(det.bias)
    tokens = torch.randn(layout.num_tokens, 8, device=device)
    assert det.path(tokens.device) == "grouped"
    for a, b in zip(*_detokenize_both(det, tokens, layout)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sizes", [[60, 45], [1], [400, 3, 250], [5000, 7000]])
def test_detokenizer_kernel_equals_full_product(sizes):
    """The fused CPU kernel (auto's choice in float32): outputs and gradients equal the full product
    ([5000, 7000]: several token blocks)."""
    need_ext("slot_matmul", "cpu")
    grid, _, offset = random_scenes(sizes, extent=40 if sum(sizes) > 1000 else 12, seed=len(sizes))
    layout = patchify(grid, offset, patch_size=5)
    det = Detokenizer(16)
    torch.nn.init.normal_(det.bias)
    tokens = torch.randn(layout.num_tokens, 16)
    assert det.path(tokens.device) == "kernel"
    for a, b in zip(*_detokenize_both(det, tokens, layout)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_detokenizer_mode_choice(monkeypatch):
    """auto: the fused kernel on the CPU in float32 (with the extension), the grouped GEMM on the CPU otherwise,
    the dense product on CUDA and where the rows are not 16-byte aligned; kernel without the extension, or for a
    dtype it lacks, is an error; dense: always the full product; an unknown mode is refused."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert Detokenizer(8).path(cuda) == "dense"
    assert Detokenizer(8, mode="grouped").path(cuda) == "grouped"
    assert Detokenizer(8, mode="dense").path(cpu) == "dense"
    assert Detokenizer(8, mode="grouped").path(cpu) == "grouped"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert Detokenizer(8).path(cpu) == "grouped"
        assert Detokenizer(4, mode="grouped").path(cpu) == "dense"  # 8-byte bf16 rows
        with pytest.raises(RuntimeError, match="mode 'kernel' needs"):
            Detokenizer(8, mode="kernel").path(cpu)
    assert Detokenizer(8).double().path(cpu) == "grouped"
    monkeypatch.setenv("VOLT_OPS", "torch")
    assert Detokenizer(8).path(cpu) == "grouped"
    monkeypatch.delenv("VOLT_OPS")
    if has_kernel("slot_matmul", "cpu"):
        assert Detokenizer(8).path(cpu) == Detokenizer(8, mode="kernel").path(cpu) == "kernel"
    with pytest.raises(ValueError, match="mode must be one of"):
        Detokenizer(8, mode="sparse")


def test_detokenizer_duplicates_and_empty_input():
    grid, _, offset = _layout_with_duplicates()
    layout = patchify(grid, offset, patch_size=5)
    det = Detokenizer(16)
    tokens = torch.randn(layout.num_tokens, 16)
    out, dense = det(tokens, layout.voxel2token, layout.slot), detokenize_dense(
        tokens, layout.voxel2token, layout.slot, det.proj.weight, det.bias)
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:7], out[60:67])  # a duplicated voxel gets its twin's feature
    leaf = tokens.clone().requires_grad_()
    det(leaf, layout.voxel2token, layout.slot).sum().backward()  # an expanded (stride-0) output gradient
    w_sum = det.proj.weight.view(125, 16, 16).sum(1)  # (S, U_in): column sums of each slot's matrix
    expect = torch.zeros_like(tokens).index_add_(0, layout.voxel2token, w_sum[layout.slot])
    torch.testing.assert_close(leaf.grad, expect, atol=1e-5, rtol=1e-5)
    empty = torch.zeros(0, dtype=torch.int64)
    assert det(torch.zeros(0, 16), empty, empty).shape == (0, 16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["auto", "grouped", "dense"])
@pytest.mark.parametrize("channels", [128, 4])  # 4 channels in bf16 (8-byte rows): the dense fallback
def test_detokenizer_under_bf16_autocast(channels, mode, device):
    """Same dtype (float32: bf16 product + float32 bias) and values as the full product under autocast."""
    grid, _, offset = random_scenes([300, 120], seed=6)
    layout = patchify(grid.to(device), offset.to(device), patch_size=5)
    det = Detokenizer(channels, mode=mode).to(device)
    torch.nn.init.normal_(det.bias)
    tokens = torch.randn(layout.num_tokens, channels, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        ours, dense = _detokenize_both(det, tokens, layout)
    assert ours[0].dtype == dense[0].dtype == torch.float32
    for a, b in zip(ours, dense):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


def test_spconv_kernels_convert_to_the_same_convolution():
    """Old checkpoints: 5-D spconv kernels (out, kx, ky, kz, in) -> our Linear layouts (see convert.py)."""
    g = torch.Generator().manual_seed(4)
    c, d, u = 3, 8, 4
    grid, feat, offset = random_scenes([150], extent=15, channels=c, seed=5)
    layout = patchify(grid, offset, patch_size=5)
    old = {
        "tokenizer.weight": torch.randn(d, 5, 5, 5, c, generator=g),
        "tokenizer.bias": torch.randn(d, generator=g),
        "decoder.unembed.weight": torch.randn(u, 5, 5, 5, u, generator=g),
        "decoder.unembed.bias": torch.randn(u, generator=g),
    }
    new = convert_reference_state_dict(old)
    tok, det = Tokenizer(c, d), Detokenizer(u)
    tok.proj.weight.data, tok.proj.bias.data = new["tokenizer.proj.weight"], new["tokenizer.proj.bias"]
    det.proj.weight.data, det.bias.data = new["decoder.unembed.proj.weight"], new["decoder.unembed.bias"]
    x, y, z = grid.long().unbind(1)
    dense_in = torch.zeros(1, c, 15, 15, 15)
    dense_in[0, :, x, y, z] = feat.T
    conv = F.conv3d(dense_in, old["tokenizer.weight"].permute(0, 4, 1, 2, 3), old["tokenizer.bias"], stride=5)
    px, py, pz = layout.patch_coord.long().unbind(1)
    tokens = tok(feat, layout.voxel2token, layout.slot, px.numel())
    torch.testing.assert_close(tokens, conv[0, :, px, py, pz].T, atol=1e-4, rtol=1e-4)
    h = torch.randn(px.numel(), u, generator=g)
    dense_tok = torch.zeros(1, u, 3, 3, 3)
    dense_tok[0, :, px, py, pz] = h.T
    up = F.conv_transpose3d(dense_tok, old["decoder.unembed.weight"].permute(4, 0, 1, 2, 3), stride=5)
    expect = up[0, :, x, y, z].T + old["decoder.unembed.bias"]
    torch.testing.assert_close(det(h, layout.voxel2token, layout.slot), expect, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- backbone behaviour


def test_tiny_forward_backward_on_cpu():
    torch.manual_seed(0)
    model = build_volt("volt-tiny", in_channels=6).train()
    grid, feat, offset = random_scenes([300, 200])
    out = model(grid, feat, offset)
    assert out.shape == (500, PRESETS["volt-tiny"]["up_mlp_dim"]) and out.dtype == torch.float32
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_bf16_autocast_forward_backward_on_cpu():
    model = lively(build_volt("volt-tiny", in_channels=6))
    grid, feat, offset = random_scenes([300, 200], seed=4)
    with torch.no_grad():
        ref = model.eval()(grid, feat, offset)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(grid, feat, offset)
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.train()(grid, feat, offset)
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_batch_isolation():
    """Changing scene B (features, even its voxels) leaves scene A's outputs unchanged."""
    model = lively(build_volt("volt-tiny", in_channels=6)).eval()
    grid, feat, offset = random_scenes([250, 180], seed=1)
    with torch.no_grad():
        base = model(grid, feat, offset)
        feat2 = feat.clone()
        feat2[250:] = torch.randn(180, 6) * 5
        torch.testing.assert_close(model(grid, feat2, offset)[:250], base[:250], atol=1e-6, rtol=0)
        fewer = model(grid[:340], feat[:340], torch.tensor([250, 340]))
        torch.testing.assert_close(fewer[:250], base[:250], atol=1e-5, rtol=1e-5)


def test_output_follows_input_order():
    model = lively(build_volt("volt-tiny", in_channels=6)).eval()
    grid, feat, offset = random_scenes([200, 150], seed=2)
    perm = torch.cat([torch.randperm(200), 200 + torch.randperm(150)])
    with torch.no_grad():
        torch.testing.assert_close(model(grid[perm], feat[perm], offset), model(grid, feat, offset)[perm],
                                   atol=1e-5, rtol=1e-5)


def test_coordinates_beyond_reference_cap():
    """Patch indices above 1024 (the reference's RoPE table) work; a patch-aligned shift changes nothing
    but float32 rounding of the rotation angles (RoPE sees only relative positions)."""
    model = lively(build_volt("volt-tiny", in_channels=6)).eval()
    grid, feat, offset = random_scenes([200], seed=3)
    far = grid + torch.tensor([5 * 3000, 5 * 1500, 5 * 2100], dtype=torch.int32)
    with torch.no_grad():
        near_out, far_out = model(grid, feat, offset), model(far, feat, offset)
        moved_one_voxel = model(grid + 1, feat, offset)  # not patch-aligned: different slots and patches
    assert torch.isfinite(far_out).all()
    torch.testing.assert_close(far_out, near_out, atol=1e-4, rtol=0)
    assert (moved_one_voxel - near_out).abs().max() > 0.1


def _param_counts(preset: str, in_channels: int = 6) -> dict[str, float]:
    with torch.device("meta"):
        model = build_volt(preset, in_channels=in_channels)
    parts = {"blocks": model.blocks, "tokenizer": model.tokenizer, "decoder": model.decoder}
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def test_parameter_counts_match_spec_table():
    """Spec §1.1 table (in = 6, 20 classes): Volt-S 23.7 M = blocks 21.3 + tokenizer 0.29 + decoder 2.1 (+ head);
    Volt-B 94.0 M = blocks 85.1 + decoder 8.4 (+ tokenizer, head)."""
    s, b = _param_counts("volt-s"), _param_counts("volt-b")
    head_s, head_b = 128 * 20 + 20, 256 * 20 + 20
    assert round(s["blocks"] / 1e6, 1) == 21.3
    assert round(s["tokenizer"] / 1e6, 2) == 0.29
    assert round(s["decoder"] / 1e6, 1) == 2.1
    assert round((s["total"] + head_s) / 1e6, 1) == 23.7
    assert round(b["blocks"] / 1e6, 1) == 85.1
    assert round(b["decoder"] / 1e6, 1) == 8.4
    assert round((b["total"] + head_b) / 1e6, 1) == 94.0
