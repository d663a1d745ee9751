"""Real-data smoke path: real ScanNet and SemanticKITTI scans through every stage the demo uses.

For each scan: the real preprocessor writes it into tmp_path; the full training chain (every augmentation)
runs on it through the standard loaders; then a tiny Volt is trained by `fit` and evaluated by its
validation on that same scan (cropped around its centre, validation chain as training chain) until the
accuracy is above 0.9. Passing shows that nothing between the raw readers and the metrics relies on a quirk
of the synthetic demo data. Data: ../shared/data via the `shared_data` fixture (skipped when absent).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from volt.config import Config, load_config
from volt.data.loader import build_loader
from volt.data.pipelines import build_pipeline
from volt.data.scannet import UnmappedLabelWarning, prepare_scannet
from volt.data.semantic_kitti import prepare_semantic_kitti
from volt.data.transforms import SphereCrop
from volt.engine import dist
from volt.engine.build import Dispatch, EpochLoader, JointDataset, build_loaders, scene_dataset
from volt.engine.trainer import fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _config(name: str, root: Path, out: Path) -> Config:
    return load_config(CONFIGS / name, [f"data.datasets.0.root={root}", f"train.out_dir={out}"])


def _check_train_chain(cfg: Config) -> None:
    """One batch of the standard training loader (all augmentations) over the real scan is well formed."""
    ds = cfg.data.datasets[0]
    train, _ = build_loaders(cfg, dist.init_distributed("cpu"))
    batch = next(iter(train))
    n = len(batch["coord"])
    assert n > 1000 and batch["offset"].tolist() == [n]
    assert batch["feat"].shape == (n, cfg.model.in_channels) and torch.isfinite(batch["feat"]).all()
    assert int(batch["grid_coord"].min()) >= 0
    labels = batch["segment"]
    assert int(labels.min()) >= -1 and int(labels.max()) < ds.num_classes
    assert (labels >= 0).float().mean() > 0.5, "most points of the real scan should keep a label"


def _overfit(cfg: Config, steps: int, crop: int) -> tuple[dict, dict]:
    """Train on the centre crop of the one scan for `steps` steps; (last train record, last val record).

    The validation chain (grid sampling, no augmentation) serves as training chain too: an overfit, not a
    generalisation test. A few hundred steps are needed, not because of the fit (train accuracy passes 0.9
    in about 30 steps) but for the BatchNorm running statistics (momentum 0.01, spec §1.1) that eval uses."""
    ds = cfg.data.datasets[0]
    chain = build_pipeline(ds.pipeline, "val", label=ds.segment_field, condition=ds.condition,
                           grid_size=ds.grid_size)
    chain.transforms.insert(1, SphereCrop(point_max=crop, mode="center"))  # right after SelectFields
    repeat = JointDataset([scene_dataset(ds, ds.train_split)], [steps // cfg.train.eval_epochs])
    train = EpochLoader(build_loader(repeat, Dispatch([chain]), batch_size=1, seed=0))
    val = EpochLoader(build_loader(scene_dataset(ds, ds.val_split), chain, batch_size=1, shuffle=False, seed=0))
    result = fit(cfg, loaders=(train, val))
    assert result.steps == steps
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    last = {kind: [r for r in records if r["kind"] == kind][-1] for kind in ("train", "val")}
    return last["train"], last["val"]


def _assert_overfits(cfg: Config, steps: int, crop: int) -> None:
    """The train chain is wired, and a short run fits the one scene: train and val accuracy > 0.9, mIoU > 0.5."""
    _check_train_chain(cfg)
    train, val = _overfit(cfg, steps=steps, crop=crop)
    assert train["train_acc"] > 0.9, train
    assert val["allAcc"] > 0.9, val
    assert val["mIoU_present"] > 0.5, val


def test_scannet_scene_overfits(shared_data: Path, tmp_path: Path) -> None:
    raw = shared_data / "scannet"
    # Two raw category names of this first-release scene are not in the v2 tsv: warned, mapped to ignore.
    with pytest.warns(UnmappedLabelWarning):
        summary = prepare_scannet(raw, tmp_path / "scannet", raw / "scannetv2-labels.combined.tsv",
                                  splits={"train": ["scene0000_00"]}, progress=False)
    assert summary.exit_code == 0 and summary.written == ["train/scene0000_00"]
    cfg = _config("smoke_scannet.yaml", tmp_path / "scannet", tmp_path / "run")
    _assert_overfits(cfg, steps=300, crop=40_000)


def test_semantic_kitti_scan_overfits(shared_data: Path, tmp_path: Path) -> None:
    summary = prepare_semantic_kitti(shared_data / "semantic_kitti", tmp_path / "sk", progress=False)
    assert summary.exit_code == 0 and summary.written == ["00_000000"]
    scan = tmp_path / "sk" / "train" / "00_000000"
    assert np.load(scan / "strength.npy").shape[1] == 1
    cfg = _config("smoke_semantic_kitti.yaml", tmp_path / "sk", tmp_path / "run")
    _assert_overfits(cfg, steps=200, crop=25_000)
