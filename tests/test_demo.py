"""tools/demo.py end to end with --quick (a few training steps, one TTA view): every stage runs, the per-class
tables print, the metrics JSON files are written, and a rerun skips the finished stages (checkpoints and
cached predictions untouched) while printing the same scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_tool


@pytest.fixture(scope="module")
def demo():
    return load_tool("demo")


def _files(root: Path, pattern: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob(pattern))}


def test_quick_demo_runs_every_stage_and_rerun_skips(demo, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    args = ["--out", str(out), "--quick", "--threads", str(torch.get_num_threads())]  # keep this process's setting
    assert demo.main(args) == 0
    first = capsys.readouterr().out
    for stage in ("[1/6] data", "[2/6] teacher", "[3/6] volt", "[4/6] test", "[5/6] instance", "[6/6] outdoor"):
        assert stage in first
    assert "already trained" not in first
    # The per-class tables: indoor (20 ScanNet classes) and outdoor (16 nuScenes classes).
    assert "ScanNet val: precise test" in first and "nuScenes val: precise test" in first
    assert " wall " in first and " driveable_surface " in first and first.count("mIoU present") == 2

    runs = out / "runs"
    for run, classes, scenes in (("volt", 20, 2), ("nuscenes_volt", 16, 4)):
        metrics = json.loads((runs / run / "test_val" / "metrics.json").read_text())
        assert metrics["num_classes"] == classes and len(metrics["classes"]) == classes
        assert 0.0 <= metrics["mIoU"] <= 1.0 and metrics["views"] == 1
        assert len(metrics["scenes"]) == scenes and all(s["fragments"] > 0 for s in metrics["scenes"])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"teacher", "volt", "instance", "nuscenes_volt", "seconds"}
    assert summary["volt"]["precise_test"]["metrics"] == str(runs / "volt" / "test_val" / "metrics.json")
    # Pictures and the viewer page of a held-out room, the charts; the instance stage's held-out AP.
    pictures = [Path(p) for p in summary["volt"]["precise_test"]["pictures"]]
    assert {p.suffix for p in pictures} == {".png", ".html"} and all(p.stat().st_size > 1000 for p in pictures)
    assert all(0.0 <= summary["instance"][k] <= 1.0 for k in ("AP", "AP50", "AP25"))
    assert "held-out AP" in first
    # The student was distilled from this teacher.
    config = (runs / "volt" / "config.yaml").read_text()
    assert str(runs / "teacher" / "best.pt") in config

    checkpoints, predictions = _files(runs, "*.pt"), _files(runs, "*_pred.npy")
    assert len([c for c in checkpoints if c.parent.name != "instance"]) == 6 and len(predictions) == 6
    assert (runs / "instance" / "last.pt") in checkpoints
    assert demo.main(args) == 0
    second = capsys.readouterr().out
    assert second.count("already trained") == 4  # teacher, volt, instance, outdoor
    assert second.count("cached") == 6
    assert _files(runs, "*.pt") == checkpoints and _files(runs, "*_pred.npy") == predictions
    again = json.loads((out / "summary.json").read_text())
    assert again["volt"]["precise_test"] == summary["volt"]["precise_test"]
