"""SparseUNet teacher: parity with the reference fixture on both backends, batching, threads, gradients, loading."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import DEVICES, fixture_file

from volt.errors import DataError
from volt.models.sparse_unet import SparseConv, SparseUNet, convert_reference_state_dict, load_reference_state_dict
from volt.ops._ext import has_ext

HAS_SPCONV = importlib.util.find_spec("spconv") is not None
needs_spconv = pytest.mark.skipif(not HAS_SPCONV, reason="spconv is not installed (pip install 'volt[spconv]')")

TINY = {"in_channels": 4, "num_classes": 3, "base_channels": 4,
        "channels": (4, 8, 8, 8, 8, 8, 4, 4), "layers": (1, 2, 1, 1, 1, 1, 2, 1)}


def _load_fixture() -> dict:
    return torch.load(fixture_file("spunet_official_parity.pt"), weights_only=True)


def _fixture_model(fx: dict, backend: str, device: str) -> SparseUNet:
    model = SparseUNet(**fx["config"], backend=backend)
    load_reference_state_dict(model, fx["state_dict"], source="spunet_official_parity.pt")
    return model.eval().to(device)


def _check_parity(fx: dict, backend: str, device: str) -> None:
    model = _fixture_model(fx, backend, device)
    inputs = {k: v.to(device) for k, v in fx["inputs"].items()}
    with torch.no_grad():
        out = model(**inputs).cpu()
    ref = fx["output"]
    err = (out - ref).abs().max().item()
    span = (ref.max() - ref.min()).item()
    assert out.shape == ref.shape
    # 1e-4 absolute on logits spanning ~2.6; reported so a regression shows its size.
    assert err <= 1e-4, f"{backend}/{device}: max abs error {err:.3g} (output range {span:.3g})"


@pytest.mark.parametrize("device", DEVICES)
def test_reference_parity_volt(device):
    _check_parity(_load_fixture(), "volt", device)


@pytest.mark.skipif(not has_ext(), reason="volt._C not built: the default run already used the torch reference ops")
def test_reference_parity_volt_torch_ops(monkeypatch):
    monkeypatch.setenv("VOLT_OPS", "torch")
    _check_parity(_load_fixture(), "volt", "cpu")


@needs_spconv
@pytest.mark.parametrize("device", DEVICES)
def test_reference_parity_spconv(device):
    _check_parity(_load_fixture(), "spconv", device)


def _scene(gen: torch.Generator, n: int, extent: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.unique(torch.randint(0, extent, (n, 3), generator=gen), dim=0)
    coords = coords[torch.randperm(len(coords), generator=gen)].int()  # unsorted input order on purpose
    return coords, torch.randn(len(coords), channels, generator=gen)


def _batch(scenes):
    coords = torch.cat([c for c, _ in scenes])
    feat = torch.cat([f for _, f in scenes])
    offset = torch.tensor([len(c) for c, _ in scenes]).cumsum(0)
    return coords, feat, offset


def _tiny(seed: int = 0, **kwargs) -> SparseUNet:
    torch.manual_seed(seed)
    model = SparseUNet(**{**TINY, **kwargs})
    for mod in model.modules():
        if isinstance(mod, SparseConv):  # unit-variance outputs, so tolerances below are meaningful
            torch.nn.init.normal_(mod.weight, std=(mod.kernel**3 * mod.c_in) ** -0.5)
        if isinstance(mod, torch.nn.BatchNorm1d):  # non-trivial running statistics for eval mode
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return model


@needs_spconv
@pytest.mark.parametrize("device", DEVICES)
def test_backends_agree_on_tiny_model(device):
    gen = torch.Generator().manual_seed(1)
    coords, feat, offset = _batch([_scene(gen, 500, 14, 4), _scene(gen, 300, 10, 4)])
    model = _tiny().eval().to(device)
    args = (coords.to(device), feat.to(device), offset.to(device))
    with torch.no_grad():
        ours = model(*args)
        model.backend = "spconv"
        theirs = model(*args)
    assert (ours - theirs).abs().max().item() < 1e-5


@needs_spconv
def test_spconv_backend_refuses_cpu_training():
    gen = torch.Generator().manual_seed(2)
    coords, feat, offset = _batch([_scene(gen, 100, 8, 4)])
    with pytest.raises(RuntimeError, match="backend='volt'"):
        SparseUNet(**TINY, backend="spconv")(coords, feat, offset)


def test_forward_backward_tiny_cpu():
    gen = torch.Generator().manual_seed(3)
    coords, feat, offset = _batch([_scene(gen, 400, 12, 4), _scene(gen, 250, 9, 4)])
    model = _tiny().train()
    feat.requires_grad_(True)
    out = model(coords, feat, offset)
    assert out.shape == (len(coords), 3)
    (out * torch.randn(out.shape, generator=gen)).sum().backward()
    assert feat.grad is not None and torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_scenes_in_a_batch_do_not_interact():
    gen = torch.Generator().manual_seed(4)
    scene_a = _scene(gen, 400, 12, 4)
    # Scene B occupies the same coordinate range as A, so only the batch index keeps them apart.
    scene_b1, scene_b2 = _scene(gen, 350, 12, 4), _scene(gen, 200, 12, 4)
    model = _tiny().eval()
    with torch.no_grad():
        alone = model(*_batch([scene_a]))
        out1 = model(*_batch([scene_a, scene_b1]))
        out2 = model(*_batch([scene_a, scene_b2]))
        first = model(*_batch([scene_b1, scene_a]))
    n = len(scene_a[0])
    torch.testing.assert_close(out1[:n], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(out2[:n], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(first[len(scene_b1[0]):], alone, rtol=0, atol=1e-5)


def test_same_result_with_one_and_two_threads():
    gen = torch.Generator().manual_seed(5)
    args = _batch([_scene(gen, 600, 14, 4), _scene(gen, 400, 12, 4)])
    model = _tiny().eval()
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            one = model(*args)
            torch.set_num_threads(2)
            two = model(*args)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_features_when_num_classes_is_zero():
    gen = torch.Generator().manual_seed(6)
    args = _batch([_scene(gen, 200, 10, 4)])
    model = _tiny(num_classes=0).eval()
    assert not any(k.startswith("final.") for k in model.state_dict())
    with torch.no_grad():
        assert model(*args).shape == (len(args[0]), TINY["channels"][-1])


def test_checkpoint_key_layout_matches_reference():
    fx = _load_fixture()
    own = SparseUNet(**fx["config"]).state_dict()
    assert {k: tuple(v.shape) for k, v in own.items()} == {k: tuple(v.shape) for k, v in fx["state_dict"].items()}


def test_convert_strips_prefixes_and_strict_load_lists_keys():
    model = _tiny()
    sd = model.state_dict()
    wrapped = {"epoch": 3, "state_dict": {f"module.backbone.{k}": v.clone() for k, v in sd.items()}}
    assert convert_reference_state_dict(wrapped).keys() == sd.keys()
    fresh = _tiny(seed=9)
    load_reference_state_dict(fresh, wrapped)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())

    broken = dict(wrapped["state_dict"])
    del broken["module.backbone.enc.0.block0.conv1.weight"]
    broken["module.backbone.seg_head.weight"] = torch.zeros(3, 4)
    broken["module.backbone.final.bias"] = torch.zeros(7)
    with pytest.raises(DataError) as info:
        load_reference_state_dict(fresh, broken, source="teacher.pth")
    message = str(info.value)
    assert "teacher.pth" in message and "enc.0.block0.conv1.weight" in message
    assert "seg_head.weight" in message and "final.bias" in message


@pytest.mark.parametrize(
    "offset, match",
    [([10], "offset"), ([5, 3], "offset"), ([], "offset")],
)
def test_bad_offsets_are_rejected(offset, match):
    gen = torch.Generator().manual_seed(7)
    coords, feat = _scene(gen, 8, 20, 4)
    with pytest.raises(ValueError, match=match):
        _tiny()(coords, feat, torch.tensor(offset, dtype=torch.int64))


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        SparseUNet(**TINY, backend="torchsparse")


@pytest.mark.parametrize("backend", ["volt", pytest.param("spconv", marks=needs_spconv)])
def test_duplicate_or_negative_voxels_are_rejected(backend):
    coords = torch.tensor([[0, 0, 0], [1, 2, 3], [0, 0, 0]], dtype=torch.int32)
    feat, offset = torch.randn(3, 4), torch.tensor([3])
    model = _tiny().eval()
    model.backend = backend
    with torch.no_grad():
        with pytest.raises(ValueError, match="duplicate"):
            model(coords, feat, offset)
        with pytest.raises(ValueError, match=">= 0"):
            model(coords - 1, feat, offset)
