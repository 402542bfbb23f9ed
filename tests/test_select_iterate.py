"""The choice of the saved iterate on training users (``train.select_episodes``, :class:`SelectIterate`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch as th
from conftest import tiny_args
from safetensors.torch import load_file

import train
from agents.callbacks import BEST_STATE_FILE, BEST_WEIGHTS_FILE, SELECTION_LOG, SelectIterate
from agents.checkpoints import checkpoint_dirs, read_checkpoint
from configs.loader import ConfigError, resolve_config


class _Net(th.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = th.nn.Linear(3, 2)


class _Scripted(SelectIterate):
    """Scores come from a script instead of simulated sessions."""

    script: Iterator[float]

    def score(self) -> float:
        return next(self.script)


def _selector(run_dir: Path, scores: list[float], resume: bool = False) -> tuple[_Scripted, SimpleNamespace]:
    sel = _Scripted(None, _Plan(10), every=100, run_dir=run_dir, k=3, resume=resume)  # type: ignore[arg-type]
    sel.script = iter(scores)
    model = SimpleNamespace(policy=_Net(), num_timesteps=0, get_env=lambda: None,
                            logger=SimpleNamespace(record=lambda *a, **k: None))
    sel.init_callback(model)  # type: ignore[arg-type]
    return sel, model


class _Plan:
    def __init__(self, n: int) -> None:
        self.keys = np.arange(n, dtype=np.uint64) * np.uint64(7919)

    def __len__(self) -> int:
        return len(self.keys)


def _set(model: SimpleNamespace, step: int, value: float) -> None:
    model.num_timesteps = step
    with th.no_grad():
        for p in model.policy.parameters():
            p.fill_(value)


def test_the_best_scoring_iterate_is_kept_ties_keep_the_earlier_and_a_step_is_scored_once(tmp_path: Path) -> None:
    sel, model = _selector(tmp_path, [1.0, 3.0, 3.0, 2.0])
    for step, value in ((100, 0.1), (200, 0.2), (300, 0.3), (400, 0.4)):
        _set(model, step, value)
        sel.evaluate()
    sel.evaluate()  # the same step again (the final call after a periodic one): not scored again
    assert sel.best_step == 200 and sel.best_return == 3.0 and sel.evaluations == 4
    assert sel.best_weights is not None and th.all(sel.best_weights["lin.weight"] == 0.2)
    rows = [json.loads(line) for line in (tmp_path / SELECTION_LOG).read_text().splitlines()]
    assert [(r["step"], r["best"]) for r in rows] == [(100, True), (200, True), (300, False), (400, False)]
    saved = load_file(str(tmp_path / BEST_WEIGHTS_FILE))
    assert th.all(saved["lin.weight"] == 0.2)
    assert sel.summary() == {"episodes": 10, "evaluations": 4, "best_step": 200, "best_return": 3.0,
                             "last_step": 400, "last_return": 2.0}


def test_a_resume_continues_the_choice_and_a_changed_best_file_restarts_it(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    sel, model = _selector(tmp_path, [5.0])
    _set(model, 100, 0.5)
    sel.evaluate()
    again, model = _selector(tmp_path, [4.0], resume=True)
    _set(model, 200, 0.7)
    again.evaluate()
    assert again.best_step == 100 and again.best_return == 5.0
    assert again.best_weights is not None and th.all(again.best_weights["lin.weight"] == 0.5)

    path = tmp_path / BEST_WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:-4])
    third, model = _selector(tmp_path, [1.0], resume=True)
    assert "best_iterate.safetensors is missing, truncated or changed" in capsys.readouterr().err
    assert third.best_step is None
    _set(model, 300, 0.9)
    third.evaluate()
    assert third.best_step == 300


def test_the_config_refuses_a_choice_without_evaluations_or_beside_an_average() -> None:
    with pytest.raises(ConfigError, match=r"select_episodes.*eval_every"):
        resolve_config(None, "default", ["train.select_episodes=100", "train.eval_every=0"])
    with pytest.raises(ConfigError, match=r"select_episodes.*policy_average_halflife"):
        resolve_config(None, "default", ["train.select_episodes=100", "train.policy_average_halflife=5"])
    with pytest.raises(ConfigError, match="select_episodes"):
        resolve_config(None, "default", ["train.select_episodes=-1"])


def test_a_run_saves_the_chosen_iterate_reports_the_last_and_a_resume_keeps_the_choice(
        tmp_path: Path, runs_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores that fall after the first evaluation: the run's policy is the iterate of step 512, not the last."""
    monkeypatch.setenv("RECFEED_CACHE", str(runs_cache))
    scores = iter([10.0, 9.0, 8.0, 7.0, 6.0, 5.0])
    monkeypatch.setattr(SelectIterate, "score", lambda self: next(scores))
    summary = train.main([*tiny_args(tmp_path, "sel", 1024), "--set", "train.select_episodes=8"])
    run = Path(summary["run_dir"])
    assert summary["selected_iterate"] == {"episodes": 8, "evaluations": 2, "best_step": 512, "best_return": 10.0,
                                           "last_step": 1024, "last_return": 9.0}
    saved = load_file(str(run / "policy.safetensors"))
    best = load_file(str(run / BEST_WEIGHTS_FILE))
    live = read_checkpoint(checkpoint_dirs(run / "checkpoints")[0])
    assert live.num_timesteps == 1024
    assert all(th.equal(saved[k], best[k]) for k in saved)  # the chosen iterate is the run's policy
    assert any(not th.equal(saved[k], live.weights[k].cpu()) for k in saved)  # not the last iterate
    results = json.loads((run / "report" / "results.json").read_text())
    assert "ppo-last" in results["rankers"]
    assert json.loads((run / BEST_STATE_FILE).read_text())["step"] == 512

    resumed = train.main(["--resume", str(run), "--total-timesteps", "1536", "--quiet"])
    assert resumed["selected_iterate"]["best_step"] == 512 and resumed["selected_iterate"]["last_step"] == 1536
    again = load_file(str(run / "policy.safetensors"))
    assert all(th.equal(again[k], best[k]) for k in again)

