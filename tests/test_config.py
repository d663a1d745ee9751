"""Config: reference defaults, YAML merge, strict keys and types (errors name the key), key=value override
coercion, the resolved-config round trip (YAML file and checkpoint dict), and every preset in configs/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from volt.config import (
    Config,
    DatasetCfg,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
    to_dict,
    to_yaml,
)
from volt.errors import DataError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_reference_recipe():
    cfg = Config()
    t = cfg.train
    assert (t.lr, t.weight_decay, t.pct_start, t.div_factor, t.final_div_factor) == (1e-3, 0.05, 0.05, 10.0, 1000.0)
    assert (t.base_momentum, t.max_momentum, t.amp, t.amp_dtype) == (0.85, 0.95, True, "float16")
    assert (t.ema, t.ema_decay, t.epochs, t.eval_epochs, t.grad_accum, t.clip_grad) == (True, 0.999, 800, 100, 1, None)
    assert (cfg.data.batch_size, cfg.data.mix_prob) == (16, 0.85)
    ds = cfg.data.datasets[0]
    assert (ds.condition, ds.num_classes, ds.grid_size, ds.segment_field) == ("ScanNet", 20, 0.02, "segment20")
    assert cfg.model.losses == {"ce": 1.0, "lovasz": 1.0} and cfg.model.label_smoothing == 0.1
    assert cfg.model.volt.preset == "volt-s" and cfg.distill.weight == 0.5
    # list defaults are per instance, never shared
    a, b = Config(), Config()
    a.train.betas.append(1.0)
    assert b.train.betas == [0.9, 0.999]


def test_yaml_merges_into_defaults(tmp_path):
    path = write(tmp_path, """
train: {lr: 2e-3, epochs: 50, eval_epochs: 50}
model:
  volt: {preset: volt-b}
data:
  datasets:
  - {condition: nuScenes, pipeline: nuscenes, num_classes: 16, grid_size: 0.05}
""")
    cfg = load_config(path)
    assert cfg.train.lr == 2e-3 and isinstance(cfg.train.lr, float)  # PyYAML reads 2e-3 as a string
    assert cfg.train.weight_decay == 0.05  # untouched keys keep their defaults
    assert cfg.model.volt.preset == "volt-b" and cfg.model.volt.qk_norm is True  # sections merge
    ds = cfg.data.datasets[0]  # list items start from the item defaults
    assert (ds.condition, ds.num_classes, ds.grid_size, ds.train_split) == ("nuScenes", 16, 0.05, ["train"])


@pytest.mark.parametrize("text, key", [
    ("train: {lrr: 0.1}", "train.lrr"),
    ("trian: {lr: 0.1}", "trian"),
    ("model: {volt: {depth: 3}}", "model.volt.depth"),
    ("data: {datasets: [{condition: A, classes: 3}]}", "data.datasets.0.classes"),
])
def test_unknown_key_is_an_error_naming_it(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=f"'{key}'") as info:
        load_config(path)
    assert "unknown key" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("text, key, expected", [
    ("train: {epochs: 10.5}", "train.epochs", "int"),
    ("train: {amp: 1}", "train.amp", "bool"),
    ("train: {lr: fast}", "train.lr", "float"),
    ("train: {betas: 0.9}", "train.betas", "list"),
    ("model: {in_channels: true}", "model.in_channels", "int"),
    ("data: {datasets: {condition: A}}", "data.datasets", "list"),
    ("train: [1, 2]", "train", "mapping"),
])
def test_wrong_type_is_an_error_naming_the_key(tmp_path, text, key, expected):
    with pytest.raises(DataError, match=f"'{key}'.*{expected}"):
        load_config(write(tmp_path, text))


def test_overrides_are_coerced_to_the_field_type():
    cfg = apply_overrides(Config(), [
        "train.lr=3e-4", "train.epochs=20", "train.eval_epochs=10", "train.amp=false", "train.clip_grad=10",
        "train.seed=null", "train.betas=[0.8, 0.99]", "data.datasets.0.root=/data/scan net",
        "model.losses={ce: 1, lovasz: 0}", "model.volt.drop_path=0.1", "train.resume=never",
        "data.datasets.0.train_split=[train, val]",
    ])
    t = cfg.train
    assert (t.lr, t.epochs, t.amp, t.clip_grad, t.seed, t.betas) == (3e-4, 20, False, 10.0, None, [0.8, 0.99])
    assert isinstance(t.clip_grad, float) and isinstance(t.epochs, int)
    assert cfg.data.datasets[0].root == "/data/scan net" and cfg.data.datasets[0].train_split == ["train", "val"]
    assert cfg.model.losses == {"ce": 1.0, "lovasz": 0.0} and cfg.model.volt.drop_path == 0.1
    assert Config().train.lr == 1e-3  # the input is not modified


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "'train.lrr'.*unknown key"),
    ("train.epochs=ten", "'train.epochs'.*expected int"),
    ("train.amp=maybe", "'train.amp'.*expected bool"),
    ("data.datasets.2.root=x", "'data.datasets.2.root'.*not an index"),
    ("train.lr.x=1", "'train.lr.x'.*no sub-keys"),
    ("train.lr", "key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(DataError, match=message):
        apply_overrides(Config(), [override])


def test_value_checks_name_the_key(tmp_path):
    with pytest.raises(DataError, match="'model.backbone'.*volt"):
        load_config(None, ["model.backbone=pointnet"])
    with pytest.raises(DataError, match="'train.epochs'.*multiple"):
        load_config(None, ["train.epochs=150"])
    with pytest.raises(DataError, match="'data.datasets'.*unique"):
        load_config(write(tmp_path, "data: {datasets: [{condition: A}, {condition: A}]}"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "nuscenes_volt_s_distill.yaml", ["train.seed=7", "train.clip_grad=1.5"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg  # every key is written, so the file alone reproduces the run
    assert config_from_dict(yaml.safe_load(to_yaml(cfg))) == cfg
    assert config_from_dict(to_dict(cfg)) == cfg  # as stored in checkpoints
    assert set(yaml.safe_load(path.read_text())) == {"task", "model", "distill", "data", "train", "eval", "instance"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_presets_load_strictly(path):
    cfg = load_config(path)
    assert cfg.data.datasets and isinstance(cfg.data.datasets[0], DatasetCfg)
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= {"task", "model", "distill", "data", "train", "eval", "instance"}


def test_presets_follow_the_spec():
    sn = load_config(CONFIGS / "scannet_volt_s_distill.yaml")
    ns = load_config(CONFIGS / "nuscenes_volt_s_distill.yaml")
    t = load_config(CONFIGS / "spunet_scannet.yaml")
    assert sn.distill.checkpoint and sn.train.epochs // sn.train.eval_epochs == 8
    assert (ns.model.in_channels, ns.data.datasets[0].grid_size, ns.train.lr) == (4, 0.05, 2e-3)
    assert (ns.train.pct_start, ns.train.final_div_factor, ns.train.epochs // ns.train.eval_epochs) == (0.04, 100.0, 1)
    assert (t.model.backbone, t.train.lr, t.train.ema, t.train.epochs // t.train.eval_epochs) == ("spunet", 6e-3,
                                                                                                 False, 4)
    s200 = load_config(CONFIGS / "scannet200_volt_s_distill.yaml").data.datasets[0]
    assert (s200.num_classes, s200.segment_field, s200.pipeline) == (200, "segment200", "scannet200")


@pytest.mark.parametrize("text, message", [
    ("data: {datasets: [{condition: A}, {condition: B}]}", r"'data.datasets'.*exactly one dataset"),
    ("data: {datasets: [{condition: nuScenes, pipeline: nuscenes}]}", r"'data.datasets.0.pipeline'.*scannet200"),
    ("instance: {stuff_classes: [0, 1, 20]}", r"'instance.stuff_classes'.*\[20\].*num_classes=20"),
    ("instance: {stuff_classes: [-1]}", r"'instance.stuff_classes'.*\[-1\]"),
    ("instance: {stuff_classes: [0, 1]}\ndata: {datasets: [{num_classes: 2}]}", r"'instance.stuff_classes'.*no instance"),
    ("instance: {loss_weights: {bse: 1.0}}", r"'instance.loss_weights.bse'.*unknown key.*class, bce, dice"),
    ("instance: {cost_weights: {dise: 1.0}}", r"'instance.cost_weights.dise'.*unknown key"),
    ("distill: {checkpoint: teacher.pt}", r"'distill.checkpoint'.*ignored by the instance task"),
    ("distill: {weight: 0.3}", r"'distill.weight'.*ignored.*0.5.*0.3"),
    ("distill: {checkpoints: {ScanNet: t.pt}}", r"'distill.checkpoints'.*ignored"),
    ("data: {sampling: round_robin}", r"'data.sampling'.*ignored.*'ratio'"),
    ("data: {grid_sampling: batch}", r"'data.grid_sampling'.*ignored"),
    ("data: {epoch_samples: 5}", r"'data.epoch_samples'.*ignored.*got 5"),
])
def test_instance_task_limits_fail_at_load_time(tmp_path, text, message):
    path = write(tmp_path, "task: instance\n" + text)
    with pytest.raises(DataError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)
    load_config(write(tmp_path, text))  # the semantic task (default) accepts the same keys


def test_instance_task_accepts_its_own_keys():
    cfg = load_config(None, ["task=instance", "instance.loss_weights={bce: 2.0}", "instance.cost_weights={}",
                             "instance.stuff_classes=[0, 1, 19]", "data.datasets.0.pipeline=scannet200",
                             "data.datasets.0.num_classes=200", "distill.weight=0.5", "data.sampling=ratio"])
    assert cfg.instance.loss_weights == {"bce": 2.0} and cfg.instance.stuff_classes == [0, 1, 19]
