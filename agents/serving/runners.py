"""Model runners for an exported policy (ONNX Runtime, TorchScript), with a deadline per request.

The serving runtime runs one request at a time per call (``run``); ``agents.export``'s parity check runs
batches through the same runners (:func:`run_exported`).
"""

from __future__ import annotations

import math
import queue
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from agents.serving.errors import ModelTimeoutError

R = TypeVar("R")


class _Watchdog:
    """Cancels ONNX Runtime runs that pass their deadline.

    One daemon thread checks the runs in flight every ``period_s``. It keeps polling while requests keep coming
    and blocks after ``idle_s`` without any, so a busy server never pays for waking it (registering a run is a
    dict insert under a lock) and an idle one costs nothing.
    """

    def __init__(self, period_s: float, idle_s: float = 1.0) -> None:
        self.period_s, self.idle_s = period_s, idle_s
        self._inflight: dict[int, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next = 0
        self._last_start = 0.0
        self._thread = threading.Thread(target=self._loop, name="recfeed-model-watchdog", daemon=True)
        self._thread.start()

    def start(self, deadline: float, run_options: Any) -> int:
        with self._lock:
            self._next += 1
            self._inflight[self._next] = (deadline, run_options)
            token = self._next
            self._last_start = time.perf_counter()
        if not self._wake.is_set():
            self._wake.set()
        return token

    def finish(self, token: int) -> None:
        with self._lock:
            self._inflight.pop(token, None)

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.period_s)
            now = time.perf_counter()
            with self._lock:
                for deadline, ro in self._inflight.values():
                    if now >= deadline:
                        ro.terminate = True
                if not self._inflight and now - self._last_start > self.idle_s:
                    self._wake.clear()


class PolicyModel(Protocol):
    """What the runtime needs from a model: ``run(inputs, deadline) -> (logits (N,), alpha, repulsion β)``.

    A model whose class sets ``enforces_deadline = True`` returns or raises by its deadline itself (ONNX Runtime:
    cancelled by the watchdog); any other model is run by the runtime on a :class:`ThreadedModel`. A model that
    can explain its logits also has ``run_explained(inputs, deadline) -> (logits (N,), alpha, β, parts (N, P))``
    (the same run with the graph's ``parts`` output); without it the runtime refuses ``explain``.
    """

    def run(self, inputs: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray, float, float]:
        """Run on one request (batch of 1) before ``deadline`` (``time.perf_counter()`` seconds).

        Raises:
            ModelTimeoutError: When the deadline passed.
        """
        ...


Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]
#: ``(logits (B, N), alpha (B,), repulsion (B,), parts (B, N, P))``: :data:`Outputs` and the logits' parts.
ExplainedOutputs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
#: One request's answer with the logits' parts: ``(logits (N,), alpha, repulsion β, parts (N, P))``.
Explained = tuple[np.ndarray, float, float, np.ndarray]


class NoScorePartsError(ValueError):
    """The exported graph has no ``parts`` output (an export older than version 3): nothing to explain with."""


class OnnxModel:
    """An exported ``policy.onnx`` under ONNX Runtime (CPU), cancelled at the deadline.

    ONNX Runtime checks the terminate flag between graph nodes (and between a loop's iterations), so a run ends
    at the first node boundary after its deadline.

    Args:
        path: The ONNX file.
        input_names: Graph inputs (manifest ``inputs``).
        threads: Intra-op threads (1: the request is tiny; the server's other work needs the cores). ``None``:
            ONNX Runtime's defaults (the export's batch runs).
        watchdog_period_s: How often the watchdog checks deadlines.
    """

    enforces_deadline = True

    def __init__(self, path: str | Path, input_names: list[str], threads: int | None = 1,
                 watchdog_period_s: float = 0.002) -> None:
        import onnxruntime as ort

        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._ort = ort
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = list(input_names)
        self.outputs = [o.name for o in self.session.get_outputs()]
        if self.outputs[:2] != ["logits", "alpha"]:
            raise ValueError(f"{path}: graph outputs {self.outputs}, expected logits, alpha[, repulsion]")
        self.has_parts = "parts" in self.outputs  # exports of version 3 on
        self.outputs = self.outputs[:3]  # a graph without the repulsion output (hand-made) has β = 0
        self._watchdog_period_s = watchdog_period_s
        self._watchdog: _Watchdog | None = None
        self._lock = threading.Lock()

    def run_batch(self, inputs: dict[str, np.ndarray]) -> Outputs:
        """Run on a batch without a deadline: ``(logits (B, N), alpha (B,), repulsion (B,))``."""
        out = self.session.run(self.outputs, inputs)
        beta = np.asarray(out[2]) if len(out) > 2 else np.zeros_like(np.asarray(out[1]))
        return np.asarray(out[0]), np.asarray(out[1]), beta

    def run_batch_explained(self, inputs: dict[str, np.ndarray]) -> ExplainedOutputs:
        """:meth:`run_batch` and the ``parts`` output (B, N, P), from the same run.

        Raises:
            NoScorePartsError: The graph has no ``parts`` output.
        """
        if not self.has_parts or len(self.outputs) < 3:
            raise NoScorePartsError("this exported graph has no 'parts' output (export version < 3)")
        out = self.session.run([*self.outputs, "parts"], inputs)
        return np.asarray(out[0]), np.asarray(out[1]), np.asarray(out[2]), np.asarray(out[3])

    def run(self, inputs: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray, float, float]:
        """See :class:`PolicyModel`."""
        out = self._run_until(self.outputs, inputs, deadline)
        return out[0][0], float(out[1][0]), float(out[2][0]) if len(out) > 2 else 0.0

    def run_explained(self, inputs: dict[str, np.ndarray], deadline: float) -> Explained:
        """:meth:`run` and the logits' parts (N, P) of the one request, from the same graph run.

        Raises:
            NoScorePartsError: The graph has no ``parts`` output.
            ModelTimeoutError: When the deadline passed.
        """
        if not self.has_parts or len(self.outputs) < 3:
            raise NoScorePartsError("this exported graph has no 'parts' output (export version < 3)")
        out = self._run_until([*self.outputs, "parts"], inputs, deadline)
        return out[0][0], float(out[1][0]), float(out[2][0]), out[3][0]

    def _run_until(self, outputs: list[str], inputs: dict[str, np.ndarray], deadline: float) -> list[Any]:
        """``session.run(outputs, inputs)``, cancelled by the watchdog at ``deadline``."""
        if self._watchdog is None:
            with self._lock:
                if self._watchdog is None:
                    self._watchdog = _Watchdog(self._watchdog_period_s)
        ro = self._ort.RunOptions()
        token = self._watchdog.start(deadline, ro)
        try:
            out = self.session.run(outputs, inputs, ro)
        except Exception as exc:
            if ro.terminate:
                raise ModelTimeoutError("model cancelled at its deadline") from exc
            raise
        finally:
            self._watchdog.finish(token)
        if time.perf_counter() > deadline:
            raise ModelTimeoutError("model answered after its deadline")
        return out


class TorchScriptModel:
    """An exported ``policy.pt`` under TorchScript (CPU).

    A TorchScript run cannot be interrupted, so the runtime runs it on its own thread (:class:`ThreadedModel`)
    and answers with the fallback at the deadline without waiting for it.

    Args:
        path: The TorchScript file.
        input_names: Graph inputs (manifest ``inputs``).
        threads: Torch intra-op threads, set by :meth:`init_thread` on the thread that runs the model (``None``:
            leave torch's setting alone). ``torch.set_num_threads`` is process-global: it also sets the thread
            count of any other torch work in this process that starts later.
    """

    def __init__(self, path: str | Path, input_names: list[str], threads: int | None = 1) -> None:
        import torch as th

        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._th = th
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = th.jit.load(str(path), map_location="cpu")
        self.input_names = list(input_names)
        self.threads = threads

    def init_thread(self) -> None:
        """Set torch's intra-op thread count on the calling thread (the thread that will run the model).

        Torch reads the count lazily per thread (a thread that already ran torch ops keeps its count), so it is
        set on the model's own thread, before its first run.
        """
        if self.threads is not None:
            self._th.set_num_threads(self.threads)

    def run_batch(self, inputs: dict[str, np.ndarray]) -> Outputs:
        """Run on a batch without a deadline: ``(logits (B, N), alpha (B,), repulsion (B,))``."""
        logits, alpha, beta = self._outputs(inputs)[:3]
        return logits.numpy(), alpha.numpy(), beta.numpy()

    def _outputs(self, inputs: dict[str, np.ndarray]) -> tuple[Any, ...]:
        """The graph's outputs as tensors (3 before export version 3, 4 with ``parts`` from then on)."""
        th = self._th
        with th.inference_mode():
            return tuple(self.module(*(th.from_numpy(inputs[n]) for n in self.input_names)))

    def run_batch_explained(self, inputs: dict[str, np.ndarray]) -> ExplainedOutputs:
        """:meth:`run_batch` and the ``parts`` output (B, N, P), from the same run.

        Raises:
            NoScorePartsError: The graph has no ``parts`` output.
        """
        out = self._outputs(inputs)
        if len(out) < 4:
            raise NoScorePartsError("this exported graph has no 'parts' output (export version < 3)")
        return out[0].numpy(), out[1].numpy(), out[2].numpy(), out[3].numpy()

    def run(self, inputs: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray, float, float]:
        """See :class:`PolicyModel`."""
        logits, alpha, beta = self.run_batch(inputs)
        if time.perf_counter() > deadline:
            raise ModelTimeoutError("model answered after its deadline")
        return logits[0], float(alpha[0]), float(beta[0])

    def run_explained(self, inputs: dict[str, np.ndarray], deadline: float) -> Explained:
        """:meth:`run` and the logits' parts (N, P), from the same run (see :meth:`OnnxModel.run_explained`)."""
        logits, alpha, beta, parts = self.run_batch_explained(inputs)
        if time.perf_counter() > deadline:
            raise ModelTimeoutError("model answered after its deadline")
        return logits[0], float(alpha[0]), float(beta[0]), parts[0]


def load_model(path: str | Path, fmt: Literal["onnx", "torchscript"], input_names: list[str],
               threads: int | None = 1) -> OnnxModel | TorchScriptModel:
    """The runner for an exported file of format ``fmt``.

    Raises:
        ValueError: For an unknown format.
    """
    if fmt == "onnx":
        return OnnxModel(path, input_names, threads=threads)
    if fmt == "torchscript":
        return TorchScriptModel(path, input_names, threads=threads)
    raise ValueError(f"unknown export format {fmt!r}")


def run_exported(path: str | Path, fmt: Literal["onnx", "torchscript"], args: tuple[np.ndarray, ...],
                 names: list[str]) -> Outputs:
    """Run an exported graph once on a batch, with the runtime's runners and the libraries' default threads.

    Args:
        path: The exported file.
        fmt: ``"onnx"`` or ``"torchscript"``.
        args: The inputs, in the order of ``names`` (``user (B, D)``, ``features (B, N, F)``, ...).
        names: The graph inputs.

    Returns:
        ``(logits (B, N), alpha (B,), repulsion (B,))`` as numpy.
    """
    return load_model(path, fmt, names, threads=None).run_batch(dict(zip(names, args, strict=True)))


def run_exported_parts(path: str | Path, fmt: Literal["onnx", "torchscript"], args: tuple[np.ndarray, ...],
                       names: list[str]) -> ExplainedOutputs:
    """:func:`run_exported` and the graph's ``parts`` output, from the same run.

    Returns:
        ``(logits (B, N), alpha (B,), repulsion (B,), parts (B, N, P))`` as numpy.

    Raises:
        NoScorePartsError: The graph has no ``parts`` output (export version < 3).
    """
    return load_model(path, fmt, names, threads=None).run_batch_explained(dict(zip(names, args, strict=True)))


class _Job:
    """One call handed to a :class:`ThreadedModel`'s thread."""

    __slots__ = ("deadline", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any], deadline: float) -> None:
        self.fn, self.deadline = fn, deadline
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class ThreadedModel:
    """Runs a model that cannot be cancelled on a thread of its own, so a request never waits past its deadline.

    :meth:`run` hands the call to the model thread and waits for it until the deadline; a call still running
    then is left to finish on that thread (its answer is dropped) and :class:`ModelTimeoutError` is raised. Calls
    queue behind a running one; a queued call whose deadline has passed before it starts is not run at all, so a
    stuck model wastes at most the one call it is stuck in. The runtime wraps every model that does not enforce
    its own deadline (``enforces_deadline``) in one.

    Args:
        model: The model (``run(inputs, deadline)``; an optional ``init_thread()`` runs first on the model thread).
        name: The thread's name.
    """

    enforces_deadline = True

    def __init__(self, model: PolicyModel, name: str = "recfeed-model") -> None:
        self.model = model
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        init_error: BaseException | None = None
        init = getattr(self.model, "init_thread", None)
        if init is not None:
            try:
                init()
            except Exception as exc:  # every call reports it
                init_error = exc
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if init_error is not None:
                job.error = init_error
            elif time.perf_counter() >= job.deadline:
                job.error = ModelTimeoutError("the deadline passed before the model thread was free")
            else:
                try:
                    job.result = job.fn()
                except BaseException as exc:
                    job.error = exc
            job.done.set()

    def call(self, fn: Callable[[], R], deadline: float = math.inf) -> R:
        """Run ``fn()`` on the model thread; wait for it until ``deadline`` (``time.perf_counter()`` seconds).

        Raises:
            ModelTimeoutError: The call did not finish by the deadline (it is not waited for).
        """
        job = _Job(fn, deadline)
        self._jobs.put(job)
        wait = None if math.isinf(deadline) else max(deadline - time.perf_counter(), 0.0)
        if not job.done.wait(wait):
            raise ModelTimeoutError("the model did not answer by its deadline (its call was not waited for)")
        if job.error is not None:
            raise job.error
        return job.result

    def run(self, inputs: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray, float, float]:
        """See :class:`PolicyModel`."""
        return self.call(lambda: self.model.run(inputs, deadline), deadline)

    def run_explained(self, inputs: dict[str, np.ndarray], deadline: float) -> Explained:
        """The model's ``run_explained`` on the model thread (see :meth:`run`).

        Raises:
            NoScorePartsError: The model cannot explain (no ``run_explained``, or a graph without ``parts``).
        """
        fn = getattr(self.model, "run_explained", None)
        if fn is None:
            raise NoScorePartsError(f"{type(self.model).__name__} does not return the logits' parts")
        return self.call(lambda: fn(inputs, deadline), deadline)

    def close(self) -> None:
        """Stop the model thread once its queued calls are done (a call stuck in the model keeps it alive)."""
        self._jobs.put(None)
