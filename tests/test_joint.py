"""Joint multi-dataset training (issue 6, VOLT_SPEC.md §1.2, §1.8, decision §5 item 10): mixed grids, loss routing,
per-dataset teachers, per-dataset validation and test, the joint demo."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_tool

from volt.config import config_from_dict, load_config, to_dict
from volt.data.batch_grid import BatchGridCollate, split_at_grid_sample
from volt.data.transforms import Compose
from volt.engine.build import TeacherSet, build_loaders, build_segmentor, build_teacher
from volt.engine.checkpoint import save_checkpoint
from volt.engine.dist import DistInfo
from volt.engine.trainer import fit
from volt.models import build_volt
from volt.ops import patchify, voxelize

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def joint_config(processed: Path, out: Path, *overrides: str):
    return load_config(ROOT / "configs" / "demo_joint.yaml", [
        f"data.datasets.0.root={processed / 'scannet'}", f"data.datasets.1.root={processed / 'nuscenes'}",
        f"train.out_dir={out}", "data.num_workers=0", *overrides])


def sample_rows(batch: dict, k: int) -> slice:
    ends = batch["unmixed_offset"].tolist()
    return slice(ends[k - 1] if k else 0, ends[k])


# --- item 3: mixed grids -----------------------------------------------------------------------------------
def two_scenes(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """A 3 x 3 x 2 m room at 2 cm and a 40 x 40 x 4 m sweep at 5 cm, concatenated."""
    g = torch.Generator().manual_seed(seed)
    room = torch.rand(3000, 3, generator=g) * torch.tensor([3.0, 3.0, 2.0])
    sweep = torch.rand(4000, 3, generator=g) * torch.tensor([40.0, 40.0, 4.0]) - torch.tensor([20.0, 20.0, 2.0])
    return torch.cat([room, sweep]), torch.tensor([3000, 7000]), [0.02, 0.05]


def test_one_voxelize_call_handles_a_2cm_and_a_5cm_scene():
    coord, offset, grids = two_scenes()
    both = voxelize(coord, offset, torch.tensor(grids), mode="test")
    room = voxelize(coord[:3000], [3000], grids[0], mode="test")
    sweep = voxelize(coord[3000:], [4000], grids[1], mode="test")
    v_room = room.num_voxels
    assert both.voxel_offset.tolist() == [v_room, v_room + sweep.num_voxels]
    assert torch.equal(both.grid_coord, torch.cat([room.grid_coord, sweep.grid_coord]))
    assert torch.equal(both.inverse, torch.cat([room.inverse, sweep.inverse + v_room]))
    assert torch.equal(both.count, torch.cat([room.count, sweep.count]))
    # each scene on its own grid: the sweep's 40 m span is ~800 cells at 5 cm (2000 at the room's 2 cm)
    assert 790 <= int(both.grid_coord[v_room:, 0].max()) <= 800
    assert 145 <= int(both.grid_coord[:v_room, 0].max()) <= 150

    layout = patchify(both.grid_coord, both.voxel_offset)
    for s, alone in enumerate((room, sweep)):
        own = patchify(alone.grid_coord, alone.voxel_offset)
        tokens = slice(int(layout.cu_seqlens[s]), int(layout.cu_seqlens[s + 1]))
        # the patches (and so the RoPE positions, the integer patch coordinates) of each scene are its own
        assert torch.equal(layout.patch_coord[tokens], own.patch_coord)
        assert (layout.token_scene[tokens] == s).all()


def test_backbone_keeps_tokens_and_rope_per_scene_in_a_mixed_grid_batch():
    coord, offset, grids = two_scenes(1)
    vox = voxelize(coord, offset, torch.tensor(grids), mode="train", generator=torch.Generator().manual_seed(0))
    feat = torch.randn(vox.num_voxels, 4, generator=torch.Generator().manual_seed(1))
    model = build_volt("volt-tiny", in_channels=4, drop_path=0.0).eval()
    v_room = int(vox.voxel_offset[0])
    with torch.no_grad():
        together = model(vox.grid_coord, feat, vox.voxel_offset)  # one forward for both scenes
        room = model(vox.grid_coord[:v_room], feat[:v_room], torch.tensor([v_room]))
        sweep = model(vox.grid_coord[v_room:], feat[v_room:], torch.tensor([vox.num_voxels - v_room]))
    # attention never crosses scenes and each scene's RoPE uses its own patch coordinates
    torch.testing.assert_close(together, torch.cat([room, sweep]), atol=1e-5, rtol=1e-4)


def test_batch_grid_collate_equals_per_scene_grid_sampling():
    coord, _, grids = two_scenes(2)
    scenes = [{"name": "room", "coord": coord[:3000].numpy(), "segment": np.arange(3000), "_dataset": 0},
              {"name": "sweep", "coord": coord[3000:].numpy(), "segment": np.arange(4000), "_dataset": 1}]
    collate = BatchGridCollate(grids, [Compose([]), Compose([])], [None, None], seed=0)
    out = collate.grid_sample(scenes)
    for scene, sampled, grid in zip(scenes, out, grids):
        alone = voxelize(torch.from_numpy(scene["coord"]), [len(scene["coord"])], grid, mode="train",
                         generator=torch.Generator().manual_seed(0))
        assert np.array_equal(sampled["grid_coord"], alone.grid_coord.numpy())  # same voxels, same order
        # the kept point of each voxel lies in that voxel of the scene's OWN grid
        cell = np.floor(scene["coord"] / np.float32(grid)).astype(np.int64)
        kept = sampled["segment"]  # = original point ids here
        assert np.array_equal(cell[kept] - cell.min(0), sampled["grid_coord"])
        assert "_dataset" not in sampled


def test_split_at_grid_sample_keeps_the_chain_order():
    from volt.data.pipelines import build_pipeline

    chain = build_pipeline("scannet", "train", grid_size=0.05)
    head, grid, tail = split_at_grid_sample(chain)
    assert [*head.transforms, grid, *tail.transforms] == chain.transforms and grid.grid_size == 0.05
    with pytest.raises(ValueError, match="inverse"):  # validation chains map every point back: worker mode
        split_at_grid_sample(build_pipeline("scannet", "val"))
    with pytest.raises(ValueError, match="exactly one train-mode GridSample"):
        split_at_grid_sample(Compose([]))


@pytest.mark.parametrize("grid_sampling", ["batch", "worker"])
def test_training_batches_voxelize_each_scene_on_its_own_grid(demo_processed, tmp_path, monkeypatch, grid_sampling):
    from volt.data import batch_grid, transforms

    calls = {"n": 0}

    def counting(original):
        def voxelize_counted(*args, **kwargs):
            calls["n"] += 1
            return original(*args, **kwargs)
        return voxelize_counted

    monkeypatch.setattr(batch_grid, "voxelize", counting(batch_grid.voxelize))
    monkeypatch.setattr(transforms, "voxelize", counting(transforms.voxelize))
    cfg = joint_config(demo_processed, tmp_path, "data.batch_size=4", "data.mix_prob=1.0",
                       f"data.grid_sampling={grid_sampling}")
    train, val = build_loaders(cfg, DistInfo(0, 0, 1, CPU))
    grids = {d.condition: d.grid_size for d in cfg.data.datasets}
    seen = set()
    for i, batch in enumerate(itertools.islice(train, 4)):
        # batch mode: ONE voxelize call per training batch, whatever its grids; worker mode: one per scene
        assert calls["n"] == (i + 1 if grid_sampling == "batch" else 4 * (i + 1))
        assert batch["feat"].shape[1] == cfg.model.in_channels == 10
        for k, condition in enumerate(batch["condition"]):
            seen.add(condition)
            rows, size = sample_rows(batch, k), batch["grid_size"][k]
            assert size == grids[condition]
            g, c = batch["grid_coord"][rows].long(), batch["coord"][rows]
            assert torch.unique(g, dim=0).shape[0] == g.shape[0]  # one point per voxel of its grid
            # the grid-coordinate span is the metric span over this sample's own grid size (±1 cell)
            span = (c.max(0).values - c.min(0).values) / size
            assert ((g.max(0).values - g.min(0).values) - span).abs().max() <= 1.0 + 1e-3
            other = slice(6, 10) if condition == "ScanNet" else slice(0, 6)
            assert not batch["feat"][rows, other].any()
        # Mix3D overlays only scenes of one grid: every mixed scene holds a single grid size
        ends = batch["unmixed_offset"].tolist()
        for lo, hi in zip([0, *batch["offset"].tolist()[:-1]], batch["offset"].tolist()):
            members = [k for k, e in enumerate(ends) if lo < e <= hi]
            assert len({batch["grid_size"][k] for k in members}) == 1
    assert seen == {"ScanNet", "nuScenes"}
    assert set(val) == {"ScanNet", "nuScenes"} and next(iter(val["nuScenes"]))["condition"] == ["nuScenes"]


def test_round_robin_loader_gives_single_dataset_batches(demo_processed, tmp_path):
    cfg = joint_config(demo_processed, tmp_path, "data.sampling=round_robin", "data.datasets.1.ratio=2.0",
                       "train.epochs=4", "train.eval_epochs=4")
    train, _ = build_loaders(cfg, DistInfo(1, 1, 2, CPU))  # rank 1 of 2: one sample of each global batch of 2
    conditions = [tuple(b["condition"]) for b in train]
    assert len(conditions) == len(train) == (8 + 16) // 2
    assert {c for c in conditions} == {("ScanNet",), ("nuScenes",)}
    assert conditions.count(("nuScenes",)) == 2 * conditions.count(("ScanNet",))


# --- item 4: loss routing and teachers ---------------------------------------------------------------------
def toy_batch(conditions: list[str], labels: list[int], mixed: bool = False, seed: int = 0) -> dict:
    """One sample per entry: 40 unique voxels, label `labels[k]` everywhere; `mixed` overlays pairs."""
    g = torch.Generator().manual_seed(seed)
    grids = [torch.randperm(512, generator=g)[:40] for _ in conditions]
    grid = torch.cat([torch.stack([i // 64, i // 8 % 8, i % 8], 1) for i in grids]).int()
    n = 40 * len(conditions)
    unmixed = torch.arange(1, len(conditions) + 1) * 40
    return {"grid_coord": grid, "feat": torch.randn(n, 4, generator=g), "coord": grid.float(),
            "segment": torch.cat([torch.full((40,), lab) for lab in labels]),
            "offset": unmixed[1::2] if mixed else unmixed, "unmixed_offset": unmixed, "condition": list(conditions)}


def joint_student(*overrides: str):
    cfg = load_config(None, ["model.in_channels=4", "model.volt.preset=volt-tiny", "model.volt.drop_path=0.0",
                             ("data.datasets=[{condition: ScanNet, num_classes: 20}, "
                              "{condition: nuScenes, pipeline: nuscenes, num_classes: 16}]"), *overrides])
    return cfg, build_segmentor(cfg)


def test_labels_reach_only_their_own_head():
    _, model = joint_student()
    model.train()
    # ScanNet labels 19 exist only in its 20-class head: routed to the 16-class head they would raise
    out = model(toy_batch(["ScanNet", "ScanNet"], [19, 19]))
    out.loss.backward()
    assert model.seg_heads["nuScenes"].weight.grad is None  # absent dataset: its head gets no gradient
    assert model.seg_heads["ScanNet"].weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    batch = toy_batch(["nuScenes", "ScanNet", "ScanNet", "nuScenes"], [3, 19, 18, 5], mixed=True)
    out = model(batch)  # two mixed scenes, each overlaying a nuScenes and a ScanNet sample
    assert out.index["ScanNet"].tolist() == list(range(40, 120))
    assert out.index["nuScenes"].tolist() == list(range(40)) + list(range(120, 160))
    out.loss.backward()
    assert all(model.seg_heads[c].weight.grad.abs().sum() > 0 for c in ("ScanNet", "nuScenes"))


def _teacher_checkpoint(tmp_path: Path, heads: dict[str, int], name: str) -> Path:
    """A tiny SpUNet teacher (feature backbone + one head per condition) saved like a training run."""
    datasets = [{"condition": c, "num_classes": n} for c, n in heads.items()]
    cfg = config_from_dict({"model": {"backbone": "spunet", "in_channels": 4, "spunet": {
        "base_channels": 8, "channels": [8, 16, 16, 8], "layers": [1, 1, 1, 1]}}, "data": {"datasets": datasets}})
    torch.manual_seed(len(name))
    return save_checkpoint(tmp_path / f"{name}.pt", build_segmentor(cfg).eval(), to_dict(cfg))


def test_per_dataset_teachers_label_only_their_own_samples(tmp_path):
    paths = {"ScanNet": _teacher_checkpoint(tmp_path, {"ScanNet": 20}, "scannet"),
             "nuScenes": _teacher_checkpoint(tmp_path, {"nuScenes": 16}, "nuscenes")}
    teachers = "{" + ", ".join(f"{c}: {p}" for c, p in paths.items()) + "}"
    cfg, model = joint_student(f"distill.checkpoints={teachers}")
    assert isinstance(model.teacher, TeacherSet)
    calls = {c: [] for c in paths}
    for c, t in model.teacher.teachers.items():
        t.model.register_forward_hook(lambda m, args, out, c=c: calls[c].append(args[0].shape[0]))
    batch = toy_batch(["ScanNet", "nuScenes", "ScanNet"], [1, 2, 3])
    model.train()
    out = model(batch)
    assert {"ScanNet/distill/ce", "nuScenes/distill/ce"} <= set(out.parts) and torch.isfinite(out.loss)
    assert calls == {"ScanNet": [80], "nuScenes": [40]}  # each teacher ran on its own samples only
    # ScanNet's pseudo-labels = its teacher on the two ScanNet samples alone
    rows = torch.cat([torch.arange(0, 40), torch.arange(80, 120)])
    alone = model.teacher.teachers["ScanNet"]
    expected = alone.pseudo_labels(alone.run(batch["grid_coord"][rows], batch["feat"][rows], torch.tensor([40, 80])),
                                   "ScanNet")
    got = model.teacher.pseudo_labels(model.teacher.run(batch["grid_coord"], batch["feat"], batch["offset"]),
                                      "ScanNet", rows)
    assert torch.equal(got, expected)

    joint_path = _teacher_checkpoint(tmp_path, {"ScanNet": 20, "nuScenes": 16}, "joint")
    joint = build_teacher(replace(cfg, distill=replace(cfg.distill, checkpoints={}, checkpoint=str(joint_path))))
    assert joint.is_joint and not isinstance(joint, TeacherSet) and set(joint.condition_heads) == set(paths)


# --- items 5 and 6: per-dataset validation, test and the demo ------------------------------------------------
def test_joint_fit_validates_and_tests_every_dataset(demo_processed, tmp_path, capsys):
    cfg = joint_config(demo_processed, tmp_path / "run", "train.epochs=2", "train.eval_epochs=2",
                       "data.epoch_samples=2", "eval.every=1")
    result = fit(cfg)
    assert result.steps == 4
    records = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"][-1]
    assert len(val["ScanNet/class_iou"]) == 20 and len(val["nuScenes/class_iou"]) == 16
    assert val["metric"] == pytest.approx((val["ScanNet/mIoU"] + val["nuScenes/mIoU"]) / 2)
    assert "validation per dataset" in (tmp_path / "run" / "train.log").read_text()
    capsys.readouterr()
    test = load_tool("test")
    assert test.main(["--ckpt", str(result.last), "--dataset", "all", "--views", "1", "--out",
                      str(tmp_path / "test")]) == 0
    rows = json.loads((tmp_path / "test" / "datasets.json").read_text())
    assert set(rows) == {"ScanNet", "nuScenes"} and rows["nuScenes"]["classes"] == 16
    table = capsys.readouterr().out.split("precise test per dataset")[-1]
    assert "ScanNet" in table and "nuScenes" in table


def test_joint_configs_load():
    indoor = load_config(ROOT / "configs" / "joint_indoor.yaml")
    assert [(d.condition, d.num_classes, d.grid_size) for d in indoor.data.datasets] == [
        ("ScanNet", 20, 0.02), ("ScanNet200", 200, 0.02)]
    assert indoor.data.sampling == "ratio" and set(indoor.distill.checkpoints) == {"ScanNet", "ScanNet200"}
    outdoor = load_config(ROOT / "configs" / "joint_outdoor.yaml")
    assert [(d.condition, d.num_classes, d.grid_size) for d in outdoor.data.datasets] == [
        ("nuScenes", 16, 0.05), ("SemanticKITTI", 19, 0.05)]
    assert outdoor.data.sampling == "round_robin" and outdoor.distill.checkpoint
    with pytest.raises(Exception, match="one teacher per condition"):
        load_config(ROOT / "configs" / "joint_indoor.yaml", ["distill.checkpoints={ScanNet: a.pt}"])


def test_demo_joint_quick_prints_the_per_dataset_table(demo_processed, capsys):
    demo = load_tool("demo_joint")
    assert demo.main(["--out", str(demo_processed.parent), "--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    table = out.split("per run")[-1]
    assert "ScanNet" in table and "nuScenes" in table and "mIoU joint" in out
    summary = json.loads((demo_processed.parent / "joint_summary.json").read_text())
    assert set(summary["single"]) == {"ScanNet", "nuScenes"} and summary["steps"] == 4
    assert np.isfinite(summary["joint"]["validation"]["nuScenes"]["mIoU"])


def test_batched_grid_sampling_is_reproducible(demo_processed, tmp_path):
    cfg = joint_config(demo_processed, tmp_path, "data.batch_size=4", "data.grid_sampling=batch", "train.seed=5")
    first = [next(iter(build_loaders(cfg, DistInfo(0, 0, 1, CPU))[0])) for _ in range(2)]
    for key in ("coord", "grid_coord", "feat", "segment", "offset"):
        assert torch.equal(first[0][key], first[1][key]), key
