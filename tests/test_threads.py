"""CPU thread budget of a training process (volt/engine/threads.py)."""

import pytest
import torch

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
