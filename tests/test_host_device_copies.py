"""``bench.host_device_copies``: the profiler bookkeeping (checked on CPU) and its refusal without a CUDA device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch as th
from torch.profiler import ProfilerActivity, profile

from bench.host_device_copies import count, main, records_python_frames, sources


def _reads_scalars(x: th.Tensor) -> float:
    return int(x.argmax()) + x.double().sum().item()  # two scalar reads, one dtype move


def test_sources_name_the_function_behind_scalar_reads_and_moves() -> None:
    x = th.randn(16)
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        for _ in range(3):
            _reads_scalars(x)
        x.sum()  # no scalar read: not counted
    if not records_python_frames(prof):  # the pinned torch 2.13 records them; the H200 image's torch 2.11 did not
        pytest.skip(f"torch {th.__version__}'s profiler records no Python frames (sources has nothing to name)")
    found = {(op, frame.rsplit(": ", 1)[-1]): k for op, frame, k in sources(prof, 10)}
    assert found[("aten::_local_scalar_dense", "_reads_scalars")] == 6
    assert found[("aten::_to_copy", "_reads_scalars")] == 3
    assert sum(found.values()) == 9
    assert sources(prof, 1) == [(op, frame, 6) for op, frame, k in sources(prof, 10)[:1]]
    assert count(prof) == {"HtoD": 0, "DtoH": 0, "DtoD": 0, "sync": 0}  # a CPU run copies nothing to a device


def test_a_policy_on_the_cpu_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECFEED_CACHE", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "small", "--set", "train.device=cpu", "--set", "encoder.kind=hashing",
              "--set", "encoder.hashing_dim=32", "--set", "train.ppo.n_envs=8", "--set", "train.ppo.n_steps=4",
              "--set", "train.ppo.batch_size=16"])
    assert exc.value.code == 2
    assert "not a CUDA device" in capsys.readouterr().err
