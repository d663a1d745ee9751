"""Checkpoint format: round trip, atomic write, strict loading, weights-only refusal, the converter tool."""

from __future__ import annotations

import pathlib
import random

import numpy as np
import pytest
import torch
from conftest import fixture_file, load_tool
from torch import nn

from volt.engine.checkpoint import (
    capture_rng,
    load_checkpoint,
    load_state_strict,
    load_teacher,
    restore_rng,
    save_checkpoint,
)
from volt.errors import DataError
from volt.models.heads import ConditionHeads
from volt.models.segmentor import Segmentor


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.out_channels = 4
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, grid_coord, feat, offset):
        return self.bn(self.fc(feat))


def _model(seed=0):
    torch.manual_seed(seed)
    return Segmentor(Tiny(), {"A": 3, "B": 2})


def _files(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_round_trip_with_training_state(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10)
    batch = {"grid_coord": torch.zeros(6, 3, dtype=torch.int32), "feat": torch.randn(6, 3),
             "offset": torch.tensor([6]), "condition": ["A"], "segment": torch.tensor([0, 1, 2, 0, 1, -1])}
    model.train()(batch).loss.backward()
    opt.step()
    sched.step()
    path = save_checkpoint(tmp_path / "run" / "last.pt", model, {"model": {"preset": "volt-tiny"}, "lr": 1e-3},
                           optimizer=opt, scheduler=sched, step=7, epoch=1, rng=capture_rng())
    assert _files(path.parent) == ["last.pt"]  # no temporary file left behind
    ckpt = load_checkpoint(path)
    assert ckpt["config"] == {"model": {"preset": "volt-tiny"}, "lr": 1e-3}
    assert ckpt["versions"]["torch"] == torch.__version__ and "volt" in ckpt["versions"]
    assert ckpt["step"] == 7 and ckpt["epoch"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v), k
    fresh = _model(seed=1)
    assert load_state_strict(fresh, ckpt["model"]) == {"missing": [], "unexpected": []}
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=1e-3, total_steps=10)
    sched2.load_state_dict(ckpt["scheduler"])
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_rng_state_round_trips_through_a_file(tmp_path):
    state = capture_rng()
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint(tmp_path / "c.pt", {}, rng=state)
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_failed_write_keeps_the_old_file_and_leaves_no_tmp(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ck.pt", {"w": torch.ones(2)})
    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.zeros(2)})
    monkeypatch.undo()
    assert _files(tmp_path) == ["ck.pt"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))


def test_save_refuses_non_plain_values():
    with pytest.raises(TypeError, match="config.paths"):
        save_checkpoint("unused.pt", {}, {"paths": {pathlib.Path("x")}})
    with pytest.raises(TypeError, match="unknown checkpoint field"):
        save_checkpoint("unused.pt", {}, best_metric=0.5)


def test_strict_load_lists_missing_unexpected_and_mismatched_keys():
    model = _model()
    state = dict(model.state_dict())
    del state["seg_heads.B.weight"]
    state["seg_heads.C.weight"] = torch.zeros(5, 4)
    state["backbone.fc.bias"] = torch.zeros(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state["backbone.fc.weight"] = torch.zeros(4, 3)  # a loadable key: must not be loaded either
    with pytest.raises(DataError) as err:
        load_state_strict(model, state, source="some.pt")
    msg = str(err.value)
    assert msg.startswith("some.pt:")
    assert "1 missing keys: [seg_heads.B.weight]" in msg
    assert "1 unexpected keys: [seg_heads.C.weight]" in msg
    assert "backbone.fc.bias (checkpoint (7,) vs model (4,))" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was loaded


def test_deliberate_partial_load_with_prefixes():
    source, target = _model(0), Segmentor(Tiny(), {"X": 7})  # fine-tune on another label set
    state = source.state_dict()
    with pytest.raises(DataError, match="missing keys"):
        load_state_strict(target, state)
    report = load_state_strict(target, state, allow_missing=["seg_heads."], ignore_unexpected=["seg_heads."])
    assert report["missing"] == ["seg_heads.X.bias", "seg_heads.X.weight"]
    assert report["unexpected"] == ["seg_heads.A.bias", "seg_heads.A.weight", "seg_heads.B.bias", "seg_heads.B.weight"]
    assert torch.equal(target.backbone.fc.weight, source.backbone.fc.weight)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_weights_only_refuses_pickled_objects_without_running_them(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "volt-checkpoint", "format_version": 1, "model": {}, "x": _Payload(str(marker))}, path)
    with pytest.raises(DataError, match="pickled Python objects"):
        load_checkpoint(path)
    assert not marker.exists()


def test_foreign_or_missing_files_are_clear_errors(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "ref.pth")
    with pytest.raises(DataError, match="convert_checkpoint"):
        load_checkpoint(tmp_path / "ref.pth")
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_safetensors_round_trip(tmp_path):
    pytest.importorskip("safetensors", reason="safetensors is optional and not installed")
    model = _model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"a": [1, 2]}, meta={"k": "v"})
    ckpt = load_checkpoint(path)
    assert ckpt["config"] == {"a": [1, 2]} and ckpt["meta"] == {"k": "v"}
    assert all(torch.equal(ckpt["model"][k], v) for k, v in model.state_dict().items())


def test_load_teacher_is_frozen_and_strict(tmp_path):
    torch.manual_seed(0)
    backbone, heads = Tiny(), ConditionHeads(4, {"A": 3})
    holder = nn.Module()
    holder.backbone, holder.seg_heads = backbone, heads
    path = save_checkpoint(tmp_path / "teacher.pt", holder)
    torch.manual_seed(1)
    teacher = load_teacher(path, Tiny(), ConditionHeads(4, {"A": 3}))
    assert torch.equal(teacher.model.fc.weight, backbone.fc.weight)
    assert torch.equal(teacher.condition_heads["A"].weight, heads["A"].weight)
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    with pytest.raises(DataError, match="unexpected keys"):
        load_teacher(path, Tiny())  # the joint teacher's heads must not be dropped silently


def test_load_teacher_takes_an_already_loaded_checkpoint(tmp_path):
    torch.manual_seed(0)
    holder = nn.Module()
    holder.backbone = Tiny()
    path = save_checkpoint(tmp_path / "teacher.pt", holder)
    ckpt = load_checkpoint(path)
    path.unlink()  # the dict alone must do: the file is not read again
    teacher = load_teacher(ckpt, Tiny(), source=path)
    assert torch.equal(teacher.model.fc.weight, holder.backbone.fc.weight)
    with pytest.raises(DataError, match="unexpected keys") as err:
        load_teacher(ckpt, nn.Linear(3, 4), source=path)
    assert err.value.path == str(path)  # errors name the file the dict came from


# --- tools/convert_checkpoint.py ------------------------------------------------------------------------

def _offset(batch: torch.Tensor) -> torch.Tensor:
    return torch.bincount(batch).cumsum(0)


def test_convert_volt_reference_checkpoint_reproduces_the_fixture(tmp_path):
    fx = torch.load(fixture_file("volt_official_parity.pt"), weights_only=True)
    from volt.models.convert import volt_from_reference_config

    torch.manual_seed(0)
    u = fx["output"].shape[1]
    head_w, head_b = torch.randn(4, u), torch.randn(4)
    state = {"module.backbone." + k: v for k, v in fx["state_dict"].items()}
    state.update({"module.seg_heads.ScanNet.weight": head_w, "module.seg_heads.ScanNet.bias": head_b})
    ref = tmp_path / "ref.pth"
    torch.save({"state_dict": state, "epoch": 3, "best_metric_value": np.float64(0.71)}, ref)
    config = tmp_path / "config.json"
    config.write_text('{"model": {"preset": "parity"}}')
    out = tmp_path / "ours.pt"
    assert load_tool("convert_checkpoint").main(["--kind", "volt", "--input", str(ref), "--output", str(out),
                              "--config-json", str(config)]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["config"] == {"model": {"preset": "parity"}}
    assert ckpt["meta"]["num_classes"] == {"ScanNet": 4} and ckpt["meta"]["kind"] == "volt"

    model = Segmentor(volt_from_reference_config(fx["config"]), {"ScanNet": 4})
    load_state_strict(model, ckpt["model"], source=out)
    model.eval()
    inputs = fx["inputs"]
    batch = {"grid_coord": inputs["grid_coord"], "feat": inputs["feat"], "offset": _offset(inputs["batch"]),
             "condition": ["ScanNet"] * 2}
    with torch.no_grad():
        feat = model.backbone(batch["grid_coord"], batch["feat"], batch["offset"])
        logits = model(batch).logits
    torch.testing.assert_close(feat, fx["output"], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, fx["output"] @ head_w.T + head_b, atol=1e-3, rtol=0)


def test_convert_spunet_teacher_reproduces_the_fixture(tmp_path):
    fx = torch.load(fixture_file("spunet_official_parity.pt"), weights_only=True)
    from volt.models.sparse_unet import SparseUNet

    ref = tmp_path / "teacher.pth"
    torch.save({"state_dict": {"module.backbone." + k: v for k, v in fx["state_dict"].items()}}, ref)
    out = tmp_path / "teacher.pt"
    assert load_tool("convert_checkpoint").main(["--kind", "spunet", "--input", str(ref), "--output", str(out)]) == 0
    cfg = fx["config"]
    model = SparseUNet(cfg["in_channels"], cfg["num_classes"], cfg["base_channels"], cfg["channels"], cfg["layers"])
    teacher = load_teacher(out, model)
    inputs = fx["inputs"]
    logits = teacher.run(inputs["grid_coord"], inputs["feat"], inputs["offset"])
    torch.testing.assert_close(logits, fx["output"], atol=1e-4, rtol=1e-4)


def test_converter_refuses_unknown_keys_and_pickled_payloads(tmp_path):
    conv = load_tool("convert_checkpoint")
    ref = tmp_path / "ref.pth"
    torch.save({"state_dict": {"module.backbone.tokenizer.proj.bias": torch.zeros(2),
                               "module.aux_head.weight": torch.zeros(2, 2)}}, ref)
    with pytest.raises(DataError, match="aux_head.weight"):
        conv.main(["--kind", "volt", "--input", str(ref), "--output", str(tmp_path / "o.pt")])
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Payload(str(tmp_path / "ran"))}, ref)
    with pytest.raises(DataError, match="pickled"):
        conv.main(["--kind", "volt", "--input", str(ref), "--output", str(tmp_path / "o.pt")])
    assert not (tmp_path / "ran").exists() and not (tmp_path / "o.pt").exists()
