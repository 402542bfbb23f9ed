"""The running average of the policy's weights (``train.policy_average_halflife``, :class:`PolicyAverage`)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch as th
from conftest import tiny_args
from safetensors.torch import load_file

import train
from agents.callbacks import PolicyAverage
from agents.checkpoints import AVERAGE_FILE, checkpoint_dirs, read_checkpoint
from configs.loader import ConfigError, resolve_config


class _Net(th.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = th.nn.Linear(3, 2)
        self.register_buffer("table", th.tensor([0, 1, 2], dtype=th.int64))
        self.device = th.device("cpu")


def _started(net: _Net, halflife: float, average: dict[str, th.Tensor] | None = None
             ) -> tuple[PolicyAverage, SimpleNamespace]:
    model = SimpleNamespace(policy=net, _n_updates=0, num_timesteps=0, get_env=lambda: None, logger=None)
    cb = PolicyAverage(halflife, average)
    cb.init_callback(model)  # type: ignore[arg-type]
    cb.on_training_start({}, {})
    return cb, model


def _step(net: _Net, model: SimpleNamespace, seed: int) -> dict[str, th.Tensor]:
    """One 'update': new weights and a new integer buffer; returns a copy of the new state."""
    gen = th.Generator().manual_seed(seed)
    with th.no_grad():
        for p in net.parameters():
            p.copy_(th.randn(p.shape, generator=gen))
        net.table.add_(1)
    model._n_updates += 1
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_the_average_is_the_exponential_moving_average_of_the_iterates_after_each_update() -> None:
    net = _Net()
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    cb, model = _started(net, halflife=2.0)
    d = 0.5 ** 0.5
    w1 = _step(net, model, 1)
    cb.on_rollout_start()  # after an update: folded in
    cb.on_rollout_start()  # no update since: unchanged (a rollout that the time limit cut, a checkpoint's call)
    w2 = _step(net, model, 2)
    cb.on_training_end()
    assert cb.average is not None
    for k in ("lin.weight", "lin.bias"):
        want = d * (d * w0[k] + (1 - d) * w1[k]) + (1 - d) * w2[k]
        assert th.allclose(cb.average[k], want, atol=1e-6)
        assert not th.allclose(cb.average[k], w2[k])  # not the last iterate
    assert th.equal(cb.average["table"], w2["table"])  # integer buffers are copied, not averaged


def test_a_saved_average_is_continued_not_restarted() -> None:
    net = _Net()
    saved = {k: th.zeros_like(v) for k, v in net.state_dict().items()}
    cb, model = _started(net, halflife=1.0, average=saved)
    w1 = _step(net, model, 3)
    cb.on_rollout_start()
    assert cb.average is not None
    assert th.allclose(cb.average["lin.weight"], 0.5 * w1["lin.weight"])  # 0.5·saved (0) + 0.5·w1


@pytest.mark.parametrize("halflife", [0.0, -1.0])
def test_the_callback_refuses_a_halflife_that_is_not_positive(halflife: float) -> None:
    with pytest.raises(ValueError, match="halflife must be > 0"):
        PolicyAverage(halflife)


def test_the_config_refuses_a_negative_halflife() -> None:
    with pytest.raises(ConfigError, match="policy_average_halflife"):
        resolve_config(None, "default", ["train.policy_average_halflife=-2"])


def test_a_run_with_an_average_saves_it_reports_the_last_iterate_and_resumes_it(tmp_path: Path, runs_cache: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    """A half-life of 1e9 updates keeps the average at the initial weights (to ~1e-8): the saved policy is the
    untrained one, the checkpoint's live weights are not, and a resumed run that continued the average (instead of
    restarting it at the checkpoint's weights) still saves the initial weights."""
    monkeypatch.setenv("RECFEED_CACHE", str(runs_cache))
    args = [*tiny_args(tmp_path, "avg", 1024), "--set", "train.policy_average_halflife=1000000000"]
    summary = train.main(args)
    run = Path(summary["run_dir"])
    ckpt = read_checkpoint(checkpoint_dirs(run / "checkpoints")[0])
    assert ckpt.num_timesteps == 1024 and ckpt.average is not None
    saved = load_file(str(run / "policy.safetensors"))
    assert set(saved) == set(ckpt.average)
    assert all(th.equal(saved[k], ckpt.average[k].cpu()) for k in saved)  # the run's policy is the average
    moved = [k for k in saved if saved[k].is_floating_point() and not th.allclose(saved[k], ckpt.weights[k].cpu())]
    assert moved  # the live weights trained away from it

    results = json.loads((run / "report" / "results.json").read_text())
    assert "ppo-last" in results["rankers"] and "ppo" in results["rankers"]
    assert results["best_hand_written_heldout"]["name"] not in ("ppo", "ppo-last")

    resumed = train.main(["--resume", str(run), "--total-timesteps", "1536", "--quiet"])
    assert resumed["total_timesteps"] == 1536
    again = load_file(str(run / "policy.safetensors"))
    assert all(th.allclose(again[k].float(), saved[k].float(), atol=1e-5) for k in saved)
    last = read_checkpoint(checkpoint_dirs(run / "checkpoints")[0])
    assert last.num_timesteps == 1536 and last.average is not None

    # killed after its last checkpoint, before the final files: the resume trains nothing and saves that average
    for name in ("summary.json", "policy.safetensors", "policy.json", "model.zip"):
        (run / name).unlink()
    assert train.main(["--resume", str(run), "--quiet"])["total_timesteps"] == 1536
    final = load_file(str(run / "policy.safetensors"))
    assert all(th.equal(final[k], last.average[k].cpu()) for k in final)


def test_a_checkpoint_whose_average_was_changed_is_refused(tmp_path: Path, runs_cache: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.checkpoints import CheckpointError

    monkeypatch.setenv("RECFEED_CACHE", str(runs_cache))
    summary = train.main([*tiny_args(tmp_path, "avg-bad", 512), "--set", "train.policy_average_halflife=2"])
    path = checkpoint_dirs(Path(summary["run_dir"]) / "checkpoints")[0]
    f = path / AVERAGE_FILE
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=r"policy_average\.safetensors: missing, truncated or changed"):
        read_checkpoint(path)
