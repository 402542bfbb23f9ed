"""The cost of running one training run as a Ray Tune trial (``agents.sweep``) against ``train.py`` directly.

``python -m bench.sweep_overhead --repeats 3`` alternates, ``--repeats`` times, one ``train.py`` run of
``configs/smoke.yaml`` under the budget of ``configs/sweeps/smoke.yaml`` and a one-trial sweep of the same config
(``python -m agents.sweep``: Ray's start, Tune's trial, the table), each a fresh process with a warm world cache
(one untimed run first), and prints the median wall time of each, their difference, and the time spent inside
the Tune trial (its ``train()`` call; the rest of the sweep's time is Ray's start, Tune, imports and the table).
Writes nothing outside a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SMOKE_SWEEP = REPO / "configs" / "sweeps" / "smoke.yaml"


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    """Run the alternation; print and return the medians (seconds)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    spec = yaml.safe_load(SMOKE_SWEEP.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="recfeed-sweep-overhead-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "RECFEED_CACHE": str(root / "cache"), "RECFEED_ENV_THREADS": "1"}
        sets = [*spec["set"], "train.ppo.learning_rate=0.001"]

        def direct(i: int) -> list[str]:
            cmd = [sys.executable, "train.py", "--config", spec["config"], "--out", str(root / "direct"),
                   "--name", f"r{i}", "--quiet"]
            for item in [*sets, "train.seed=0"]:
                cmd += ["--set", item]
            return cmd

        def sweep(i: int) -> list[str]:
            path = root / f"sweep{i}.yaml"
            path.write_text(yaml.safe_dump({"config": spec["config"], "set": sets, "seeds": [0], "num_cpus": 1,
                                            "cpus_per_trial": 1, "out": str(root / f"sweep{i}")}), encoding="utf-8")
            return [sys.executable, "-m", "agents.sweep", "--config", str(path)]

        _timed(direct(-1), env)  # builds the world and the tuning caches; untimed
        times: dict[str, list[float]] = {"train.py": [], "agents.sweep (1 trial)": [], "inside the trial": []}
        for i in range(args.repeats):
            times["train.py"].append(_timed(direct(i), env))
            times["agents.sweep (1 trial)"].append(_timed(sweep(i), env))
            trials = json.loads((root / f"sweep{i}" / "sweep.json").read_text(encoding="utf-8"))["trials"]
            times["inside the trial"].append(next(iter(trials.values()))["trial_seconds"])
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"median_s": med, "all_s": times, "overhead_s": med["agents.sweep (1 trial)"] - med["train.py"]}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
