"""What recfeed's OpenMP fits cost on one thread and on every core, alone and beside a busy process.

``--library trees`` (the default): ``agents.type_switch.BoostedClassifier`` (the reader of ``tuned-switch`` and
``bench.type_switch --reader boosted``) fits scikit-learn's ``HistGradientBoostingClassifier``, whose OpenMP threads
default to every core. The bench fits trees of the reader's settings on a synthetic table of its size and reads a
request's batch. ``--library als``: ``envs.cf.fit_als`` (the world's CF model, calibration, ``envs.data.cf_eval``)
fits implicit's ALS, whose OpenMP loop over users and items takes every core by default (``num_threads=0``); the bench
fits it on a synthetic implicit-feedback matrix of ``--rows`` users × ``--items`` items, as the world builds do.
``--library torch``: PPO's update (``train.torch_threads``, torch's intra-op pool, OpenMP on Linux); the bench times
``--steps`` Adam steps of a network of the slate policy's size on one minibatch (``train.ppo.batch_size`` 2,048
requests × 100 candidates: a 64-wide state net over a 400-d input, a 16-wide per-candidate net over the 7 features
and the state).

Each fit runs on one thread and on ``--threads`` (default: every core): with the machine to itself, beside
``--busy`` processes spinning in plain Python, and beside as many processes that run the same fit on every core
(another OpenMP job: a second protocol, a test run, a world build). Medians of ``--repeats`` runs of each; the ratios
are of medians measured in the same run. The last printed line is the JSON.

    .venv/bin/python -m bench.reader_threads --repeats 3
    .venv/bin/python -m bench.reader_threads --library als --rows 20000 --repeats 5
    .venv/bin/python -m bench.reader_threads --library torch --repeats 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
import warnings
from typing import Any

import numpy as np


def _spin(stop: Any) -> None:
    """Keep one core busy in plain Python until ``stop`` is set."""
    while not stop.is_set():
        sum(range(10_000))


def _fit_trees(stop: Any) -> None:
    """Keep fitting the reader's trees on OpenMP's default threads (every core) until ``stop`` is set: another
    OpenMP job, as a second protocol or a test run that fits the reader is."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, 12))
    y = x[:, 0] + rng.normal(size=20_000) > 0
    from sklearn.ensemble import HistGradientBoostingClassifier

    while not stop.is_set():
        HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(x, y)


def als_matrix(users: int, items: int, per_user: int = 30, seed: int = 0) -> Any:
    """float32 CSR (users, items) implicit feedback as :func:`envs.cf.fit_als` builds it from the world's logs:
    ``per_user`` clicks a user on items drawn by a Zipf-like popularity, weight 1 a click and 2 a purchase, times the
    world's confidence scale (``env.logging.cf_alpha``, 10)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    cols = rng.choice(items, size=users * per_user, p=pop / pop.sum())
    rows = np.repeat(np.arange(users), per_user)
    weight = 1.0 + rng.integers(0, 2, len(rows))
    m = sp.csr_matrix((10.0 * weight, (rows, cols)), shape=(users, items), dtype=np.float32)
    m.sum_duplicates()
    return m


def time_als(threads: int, matrix: Any) -> float:
    """Seconds of one ALS fit with the world's settings (``env.logging``: 16 factors, 15 iterations, regularisation
    0.1) on ``threads`` OpenMP threads (implicit's ``num_threads``), BLAS on one thread as :func:`envs.cf.fit_als`
    has it."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(factors=16, regularization=0.1, iterations=15, random_state=0,
                                        num_threads=threads)
        t0 = time.perf_counter()
        model.fit(matrix, show_progress=False)
        return time.perf_counter() - t0


def _fit_als(stop: Any) -> None:
    """Keep fitting ALS on implicit's default threads (every core) until ``stop`` is set: another OpenMP job."""
    matrix = als_matrix(10_000, 3_000, seed=1)
    while not stop.is_set():
        time_als(0, matrix)


def time_torch(threads: int, steps: int = 10) -> float:
    """Seconds of ``steps`` Adam steps (forward, backward, step) of a policy-sized network on one PPO minibatch, on
    ``threads`` torch intra-op threads (restored after)."""
    import torch as th

    before = th.get_num_threads()
    th.set_num_threads(threads)
    try:
        gen = th.Generator().manual_seed(0)
        state, cand = th.randn(2048, 400, generator=gen), th.randn(2048, 100, 7, generator=gen)
        state_net = th.nn.Sequential(th.nn.Linear(400, 64), th.nn.ReLU(), th.nn.Linear(64, 64))
        cand_net = th.nn.Sequential(th.nn.Linear(7 + 64, 16), th.nn.ReLU(), th.nn.Linear(16, 1))
        opt = th.optim.Adam([*state_net.parameters(), *cand_net.parameters()], lr=1e-3)
        t0 = time.perf_counter()
        for _ in range(steps):
            h = state_net(state)  # (2048, 64)
            logits = cand_net(th.cat([cand, h[:, None, :].expand(-1, 100, -1)], dim=-1))[..., 0]  # (2048, 100)
            loss = th.logsumexp(logits, dim=1).mean() - logits[:, 0].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0
    finally:
        th.set_num_threads(before)


def _fit_torch(stop: Any) -> None:
    """Keep taking update steps on torch's default threads (every core) until ``stop`` is set: another PPO run."""
    import torch as th

    while not stop.is_set():
        time_torch(th.get_num_threads(), steps=2)


def time_reader(threads: int, x: np.ndarray, y: np.ndarray, batch: np.ndarray, reads: int) -> tuple[float, float]:
    """Seconds of one fit with the reader's settings and milliseconds of one read of ``batch``, on ``threads``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="openmp"):
        t0 = time.perf_counter()
        model = HistGradientBoostingClassifier(max_iter=400, learning_rate=0.05, early_stopping=True,
                                               validation_fraction=0.15, random_state=0).fit(x, y)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(reads):
            model.predict_proba(batch)
        read_ms = (time.perf_counter() - t0) / reads * 1e3
    return fit_s, read_ms


def bound_cost_ms(calls: int = 200) -> dict[str, float]:
    """Milliseconds to enter and leave a one-thread OpenMP bound, median of ``calls``: ``threadpool_limits`` (which
    finds the loaded libraries on each call) against a ``ThreadpoolController`` found once, as the reader keeps one."""
    import sklearn.ensemble  # noqa: F401  (scikit-learn's OpenMP loaded, as in the reader)
    from threadpoolctl import ThreadpoolController, threadpool_limits

    controller = ThreadpoolController()
    out = {}
    for name, bound in (("threadpool_limits", lambda: threadpool_limits(limits=1, user_api="openmp")),
                        ("controller", lambda: controller.limit(limits=1, user_api="openmp"))):
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            with bound():
                pass
            times.append(time.perf_counter() - t0)
        out[name] = float(np.median(times) * 1e3)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the bench and print the table and the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", choices=("trees", "als", "torch"), default="trees",
                    help="trees: the boosted type reader (scikit-learn); als: the CF model's fit (implicit); "
                         "torch: PPO's update steps")
    ap.add_argument("--rows", type=int, default=40_000,
                    help="trees: training requests (the reader fits on ~10^4-10^5); als: users")
    ap.add_argument("--features", type=int, default=12, help="trees: columns")
    ap.add_argument("--items", type=int, default=3_000, help="als: items")
    ap.add_argument("--batch", type=int, default=500, help="trees: rows of one read (users simulated at once)")
    ap.add_argument("--reads", type=int, default=50, help="trees: reads timed per fit")
    ap.add_argument("--steps", type=int, default=10, help="torch: update steps timed per fit")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the many-thread arm (default: cores)")
    ap.add_argument("--busy", type=int, default=1, help="neighbours: busy in plain Python, then running the same fit")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if min(args.rows, args.features, args.items, args.batch, args.reads, args.steps, args.threads, args.repeats) < 1 \
            or args.busy < 0:
        ap.error("--rows, --features, --items, --batch, --reads, --steps, --threads and --repeats must be >= 1, "
                 "--busy >= 0")
    rng = np.random.default_rng(0)
    if args.library == "trees":
        x = rng.normal(size=(args.rows, args.features))
        y = x[:, 0] + rng.normal(size=args.rows) > 0
        batch = rng.normal(size=(args.batch, args.features))

        def one(n: int) -> tuple[float, float | None]:
            return time_reader(n, x, y, batch, args.reads)

        neighbour = _fit_trees
    elif args.library == "als":
        matrix = als_matrix(args.rows, args.items)

        def one(n: int) -> tuple[float, float | None]:
            return time_als(n, matrix), None

        neighbour = _fit_als
    else:
        time_torch(1, steps=1)  # torch's first call pays one-off set-up

        def one(n: int) -> tuple[float, float | None]:
            return time_torch(n, args.steps), None

        neighbour = _fit_torch
    out: dict[str, Any] = {"library": args.library, "cpu_count": os.cpu_count(), "rows": args.rows,
                           "threads": args.threads, "busy": args.busy, "repeats": args.repeats}
    settings = {"alone": (0, _spin), "beside_python": (args.busy, _spin), "beside_openmp": (args.busy, neighbour)}
    for setting, (busy, job) in settings.items():
        ctx = mp.get_context("spawn")  # OpenMP's runtime does not survive a fork once it has run
        stop = ctx.Event()
        spinners = [ctx.Process(target=job, args=(stop,), daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            runs = {n: [one(n) for _ in range(args.repeats)] for n in sorted({1, args.threads})}
        finally:
            stop.set()
            for p in spinners:
                p.join()
        out[setting] = {str(n): {"fit_s": float(np.median([r[0] for r in rs])),
                                 "read_ms": None if rs[0][1] is None else float(np.median([r[1] for r in rs]))}
                        for n, rs in runs.items()}
    what = {"trees": "trees", "als": "ALS", "torch": "a policy (torch)"}[args.library]
    print(f"| machine | threads | fit (s, median of {args.repeats}) | read of {args.batch} rows (ms) |")
    print("|---|---:|---:|---:|")
    labels = {"alone": "alone", "beside_python": f"beside {args.busy} busy Python process(es)",
              "beside_openmp": f"beside {args.busy} process(es) fitting {what} on every core"}
    for setting, label in labels.items():
        for n, fig in out[setting].items():
            read = "—" if fig["read_ms"] is None else f"{fig['read_ms']:.1f}"
            print(f"| {label} | {n} | {fig['fit_s']:.2f} | {read} |")
    many = str(args.threads)
    for setting in labels:
        out[f"{setting}_fit_ratio_many_over_one"] = out[setting][many]["fit_s"] / out[setting]["1"]["fit_s"]
        print(f"{labels[setting]}: fit on {many} threads / on 1: {out[f'{setting}_fit_ratio_many_over_one']:.2f}")
    if args.library == "trees":
        out["bound_ms"] = bound_cost_ms()
        print(f"the one-thread bound per call (ms): threadpool_limits {out['bound_ms']['threadpool_limits']:.3f}, "
              f"the reader's controller {out['bound_ms']['controller']:.3f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
