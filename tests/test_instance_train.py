"""Instance-task training on the demo rooms: overfitting one room's instances (AP50 > 0.9), strict loading of a
semantic checkpoint's backbone, the poly schedule, and fit(task=instance) -> best.pt -> run_instance_test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_tool

from volt.config import load_config
from volt.data.dataset import SceneDataset
from volt.data.pipelines_instance import collate_instances, scannet_instance_val
from volt.engine.checkpoint import save_checkpoint
from volt.errors import DataError
from volt.models import Segmentor, build_volt
from volt.models.instance_segmentor import InstanceSegmentor

pytest.importorskip("scipy")
ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["coord", "color", "normal", "segment20", "instance", "superpoint"]


def test_overfits_one_room(demo_processed):
    from volt.engine.instance_eval import InstanceEvaluator
    from volt.engine.instance_test import predict_instances
    from volt.engine.instance_train import recompute_batchnorm

    torch.manual_seed(0)
    ds = SceneDataset(demo_processed / "scannet", "train", fields=FIELDS)
    scene = next(ds[i] for i in range(len(ds)) if ds.names()[i] == "scene0005_00")  # 8 objects, 13 instances
    chain = scannet_instance_val(grid_size=0.05)
    batch = collate_instances([chain(scene)])
    model = InstanceSegmentor(build_volt("volt-tiny", 6, drop_path=0.0), num_queries=24, d_model=64, num_heads=4,
                              ffn_dim=128, num_layers=2)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    model.train()
    for _ in range(80):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.parts["dice"] < 0.05 and out.parts["matched_correct"] == out.parts["matched"] == 8
    # running BN statistics = this batch's, so eval mode computes what training saw (overfit check only)
    assert recompute_batchnorm(model, [batch], torch.device("cpu")) == 1
    model.eval()
    pred = predict_instances(model, scene, chain)
    assert pred["masks"].shape[1] == len(scene["coord"]) and pred["masks"].dtype == bool
    again = predict_instances(model, scene, chain)  # repeatable: the picks do not depend on earlier calls
    assert all(np.array_equal(pred[k], again[k]) for k in ("masks", "classes", "scores"))
    ev = InstanceEvaluator()
    ev.add(scene["segment20"], scene["instance"], pred["masks"], pred["classes"], pred["scores"], name="room")
    result = ev.compute()
    assert result["all_ap_50%"] > 0.9, result
    print(f"overfit room: AP {result['all_ap']:.3f} AP50 {result['all_ap_50%']:.3f} AP25 {result['all_ap_25%']:.3f}")


def _semantic_checkpoint(path: Path, qk_norm: bool = True) -> dict:
    torch.manual_seed(1)
    model = Segmentor(build_volt("volt-tiny", 6, qk_norm=qk_norm), {"ScanNet": 20})
    save_checkpoint(path, model, {"note": "test"})
    return {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}


def test_backbone_loads_strictly(tmp_path):
    from volt.engine.instance_train import build_instance_segmentor

    ckpt = tmp_path / "sem.pt"
    expected = _semantic_checkpoint(ckpt)
    base = ["task=instance", "model.volt.preset=volt-tiny", f"instance.init_checkpoint={ckpt}",
            "instance.num_queries=4", "instance.d_model=32", "instance.num_heads=2", "instance.num_layers=1"]
    model = build_instance_segmentor(load_config(None, base))
    got = model.backbone.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # the reference's mistake: an instance backbone without q/k norms must not load a qk-norm checkpoint
    with pytest.raises(DataError, match=r"unexpected keys.*(q_norm|k_norm)"):
        build_instance_segmentor(load_config(None, [*base, "model.volt.qk_norm=false"]))
    # and a checkpoint without them does not load into a backbone that has them
    _semantic_checkpoint(tmp_path / "noqk.pt", qk_norm=False)
    with pytest.raises(DataError, match=r"missing keys.*(q_norm|k_norm)"):
        build_instance_segmentor(load_config(None, [*base, f"instance.init_checkpoint={tmp_path / 'noqk.pt'}"]))
    with pytest.raises(DataError, match="no EMA weights"):
        build_instance_segmentor(load_config(None, [*base, "instance.init_weights=ema"]))


def test_poly_schedule():
    from volt.engine.optim import build_optimizer, poly_scheduler

    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, 0.1, 0.0, [0.9, 0.999])
    sched = poly_scheduler(opt, 10, 0.9)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 * 0.5 ** 0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0) and opt.param_groups[0]["betas"][0] == 0.9


def test_instance_evaluator_follows_the_config(tmp_path):
    from volt.config import config_from_dict
    from volt.data.scannet_classes import CLASS_NAMES_200
    from volt.engine.instance_test import instance_evaluator

    cfg = config_from_dict({"task": "instance", "instance": {"stuff_classes": [0, 1, 3]},
                            "data": {"datasets": [{"condition": "ScanNet200", "pipeline": "scannet200",
                                                   "num_classes": 200, "root": str(tmp_path / "none")}]}})
    ev = instance_evaluator(cfg)  # no processed data: the benchmark's 200 names
    assert ev.class_names == tuple(CLASS_NAMES_200)
    assert ev.ignore.tolist() == [-1, 0, 1, 3] and 3 not in ev.valid and 199 in ev.valid
    assert instance_evaluator(cfg, [f"c{i}" for i in range(200)]).class_names[5] == "c5"


def test_fit_and_test_instance_task(demo_processed, tmp_path):
    from volt.engine.instance_test import run_instance_test
    from volt.engine.trainer import fit

    ckpt = tmp_path / "sem.pt"
    _semantic_checkpoint(ckpt)
    cfg = load_config(ROOT / "configs" / "demo_instance.yaml", [
        f"data.datasets.0.root={demo_processed / 'scannet'}", f"train.out_dir={tmp_path / 'run'}",
        f"instance.init_checkpoint={ckpt}", "data.datasets.0.grid_size=0.1", "data.num_workers=0",
        "data.mix_prob=1.0", "train.epochs=1", "train.eval_epochs=1", "train.stop_at_step=null",
        "instance.num_layers=1", "instance.num_queries=8", "train.log_every=1"])
    result = fit(cfg)
    assert result.steps == 4 and (tmp_path / "run" / "last.pt").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("kind", r.get("split")) == "val" or "AP50" in r]
    assert val and {"AP", "AP50", "AP25", "metric"} <= set(val[-1])
    train = [r for r in records if "dice" in r]
    assert train and all(np.isfinite(r["loss"]) for r in train)
    out = run_instance_test(cfg, tmp_path / "run" / "last.pt", tmp_path / "test", submission=True, log=lambda s: None)
    assert set(out) >= {"AP", "AP50", "AP25"} and (tmp_path / "test" / "metrics.json").is_file()
    assert len(list((tmp_path / "test" / "submit").glob("*.txt"))) == 2  # one summary file per val room


def test_demo_instance_stage_quick(demo_processed, tmp_path):
    tool = load_tool("demo_instance")
    ckpt = tmp_path / "sem.pt"
    _semantic_checkpoint(ckpt)
    out = tool.instance_stage(demo_processed, tmp_path / "runs", ckpt, quick=True, overwrite=False)
    assert {"AP", "AP50", "AP25", "best_val_AP50", "run", "metrics"} <= set(out)
    assert all(0.0 <= out[k] <= 1.0 for k in ("AP", "AP50", "AP25") if out[k] == out[k])
    mtime = (tmp_path / "runs" / "instance" / "last.pt").stat().st_mtime
    again = tool.instance_stage(demo_processed, tmp_path / "runs", ckpt, quick=True, overwrite=False)
    assert (tmp_path / "runs" / "instance" / "last.pt").stat().st_mtime == mtime  # a finished run is reused
    assert again["AP50"] == out["AP50"] or (again["AP50"] != again["AP50"] and out["AP50"] != out["AP50"])


def test_recompute_batchnorm_averages_the_batches():
    from volt.engine.instance_train import recompute_batchnorm

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(2, momentum=0.01)

        def forward(self, batch):
            assert "instance" not in batch  # no targets: the instance model skips its loss
            return self.bn(batch["feat"])

    net = Net().eval()
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(50, 2, generator=g) * 3 + 1, torch.randn(50, 2, generator=g) - 2]
    used = recompute_batchnorm(net, [{"feat": f, "instance": None} for f in feats], torch.device("cpu"))
    assert used == 2 and not net.training and net.bn.momentum == 0.01
    assert torch.allclose(net.bn.running_mean, torch.cat(feats).mean(0), atol=1e-5)
