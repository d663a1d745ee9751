"""CPU thread budget of a training process (volt/engine/threads.py)."""

import pytest
import torch
from conftest import load_tool

from volt.engine.threads import cpu_threads, set_cpu_threads


def test_cores_left_after_workers_split_over_ranks():
    assert cpu_threads(num_workers=1, cores=2, local_world_size=1) == 1
    assert cpu_threads(num_workers=0, cores=2, local_world_size=1) == 2
    assert cpu_threads(num_workers=2, cores=16, local_world_size=2) == 6  # 8 cores per rank, 2 workers
    assert cpu_threads(num_workers=8, cores=4, local_world_size=1) == 1  # never below one


def test_explicit_request_wins_and_is_checked():
    assert cpu_threads(num_workers=4, requested=3, cores=2) == 3
    with pytest.raises(ValueError, match="at least 1"):
        cpu_threads(num_workers=0, requested=0)


def test_environment_choice_is_respected(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_cpu_threads(num_workers=0) is None
        assert torch.get_num_threads() == before
        assert set_cpu_threads(num_workers=0, requested=1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


class _Applied(Exception):
    pass


@pytest.mark.parametrize("tool", ["demo", "demo_joint", "demo_instance"])
@pytest.mark.parametrize("argv,requested", [([], None), (["--threads", "3"], 3)])
def test_demos_set_threads_through_set_cpu_threads(tool, argv, requested, monkeypatch, tmp_path):
    """Every demo applies the same rule as tools/train.py (OMP_NUM_THREADS or --threads win; else the
    cores left beside the one loader worker), before any work starts."""
    module = load_tool(tool)
    calls = []

    def record(num_workers, requested=None):
        calls.append((num_workers, requested))
        raise _Applied

    monkeypatch.setattr(module, "set_cpu_threads", record)
    with pytest.raises(_Applied):
        module.main(["--out", str(tmp_path), *argv])
    assert calls == [(1, requested)]
    assert not any(tmp_path.iterdir())  # nothing ran before the threads were set
