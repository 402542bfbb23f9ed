"""Tensor building blocks of the slate policy (``agents/policies.py``): row standardisation, the candidates' spread,
the symlog squash, a linear layer whose backward suits tall inputs, the candidate-id check, the hidden MLP stack, a
column standardiser with running statistics and the check that an update left the weights finite.

Kept apart from the policy class so that the network's structure reads on its own; all are pure functions of their
inputs (no state) except :class:`RunningStandardiser`, whose statistics are buffers; shapes noted on each.
"""

from __future__ import annotations

from typing import Any

import torch as th
from torch import nn


def standardise_rows(x: th.Tensor, eps: float = 1e-9) -> th.Tensor:
    """``(x − mean) / (std + eps)`` over the last axis (population std, as numpy's): (B, N) → (B, N).

    The diversity heuristic's ``z`` (``agents.baselines.DiverseRanker``), so a residual on it starts at its slates.
    """
    mean = x.mean(dim=-1, keepdim=True)
    std = (x - mean).square().mean(dim=-1, keepdim=True).sqrt()
    return (x - mean) / (std + eps)


#: Added under the square roots of :func:`candidate_spread` (a request whose candidates are all alike reads 0).
SPREAD_EPS = 1e-8


def candidate_spread(cand: th.Tensor, features: th.Tensor, mask: th.Tensor | None, llm_col: int,
                     cf_col: int) -> th.Tensor:
    """How the request's candidates spread: each candidate column's standard deviation over the candidates, and the
    correlation of two raw feature columns (the LLM and CF signals) across them, over the unmasked ones.

    Args:
        cand: (B, N, X) the policy's candidate rows.
        features: (B, N, F) the raw feature rows.
        mask: (B, N) bool, the candidates that count, or None (all).
        llm_col: The LLM signal's column of ``features``.
        cf_col: The CF signal's.

    Returns:
        (B, X + 1): the X standard deviations (population, ``sqrt(var + SPREAD_EPS)``), then the correlation.
    """
    w = th.ones_like(cand[..., :1]) if mask is None else mask.unsqueeze(-1).to(cand.dtype)  # (B, N, 1)
    n = w.sum(dim=1).clamp(min=1.0)  # (B, 1)

    def centred(x: th.Tensor) -> th.Tensor:  # (B, N, k) minus its weighted mean over N, zero where masked
        return (x - (x * w).sum(dim=1, keepdim=True) / n.unsqueeze(1)) * w

    c = centred(cand)
    sd = (c.square().sum(dim=1) / n + SPREAD_EPS).sqrt()  # (B, X)
    pair = centred(th.stack([features[..., llm_col], features[..., cf_col]], dim=-1).to(cand.dtype))  # (B, N, 2)
    var = pair.square().sum(dim=1) / n  # (B, 2)
    cov = (pair[..., 0] * pair[..., 1]).sum(dim=1, keepdim=True) / n  # (B, 1)
    corr = cov / ((var[:, :1] + SPREAD_EPS) * (var[:, 1:] + SPREAD_EPS)).sqrt()
    return th.cat([sd, corr], dim=-1)


def symlog(x: th.Tensor) -> th.Tensor:
    """sign(x)·log1p(|x|): keeps sign and order, tames unbounded feature columns for the MLPs."""
    return th.sign(x) * th.log1p(th.abs(x))


class _RowsLinear(th.autograd.Function):
    """``x @ w.T + b`` for tall ``x`` (R, I) (R = B·N rows), with a backward shaped for such inputs.

    Autograd's own ``linear`` backward forms the weight gradient as ``g.T @ x``, which for (R, I) with small I
    (7 features) is ~8x slower on CPU than the same product as ``(x.T @ g).T``; and for one output column it
    forms the input gradient as an outer product by ``mm``, slower than a broadcast multiply. Same values.
    """

    @staticmethod
    def forward(ctx: Any, x: th.Tensor, w: th.Tensor, b: th.Tensor) -> th.Tensor:
        ctx.save_for_backward(x, w)
        return th.addmm(b, x, w.t())

    @staticmethod
    def backward(ctx: Any, g: th.Tensor) -> tuple[th.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g * w if w.shape[0] == 1 else g @ w  # (R, I)
        if ctx.needs_input_grad[1]:
            gw = (x.t() @ g).t().contiguous()  # (O, I)
        if ctx.needs_input_grad[2]:
            gb = g.sum(dim=0)
        return gx, gw, gb


def rows_linear(x: th.Tensor, w: th.Tensor, b: th.Tensor) -> th.Tensor:
    """``x @ w.T + b`` for x (R, I), w (O, I), b (O,) → (R, O); :class:`_RowsLinear` when autograd is on (and
    the graph is not being traced for export)."""
    tracing = th.jit.is_tracing() or th.onnx.is_in_onnx_export()  # export traces the plain op
    if th.is_grad_enabled() and not tracing and (x.requires_grad or w.requires_grad or b.requires_grad):
        return _RowsLinear.apply(x, w, b)
    return th.addmm(b, x, w.t())


def catalog_ids(candidates: th.Tensor, n_items: int, check: bool = True) -> th.Tensor:
    """Candidate catalog ids (B, N) as int64, checked to lie in ``[0, n_items)`` (the policy's item tables).

    An id outside the catalog the policy was trained on is an error, never clamped onto another item: it means
    the observation comes from another world. The check is one ``aminmax`` over (B, N) and one read of the device;
    it is left out while the graph is traced for export (the exported runtime's gather then rejects such an id
    itself) and where the caller says the ids were checked already (``check=False``).

    Raises:
        ValueError: Naming the first offending row and id.
    """
    ids = candidates.round().long()
    if check and ids.numel() and not (th.jit.is_tracing() or th.onnx.is_in_onnx_export()):
        lo, hi = th.aminmax(ids)
        if bool((lo < 0) | (hi >= n_items)):  # one read of the device, not two
            bad = (ids < 0) | (ids >= n_items)
            row = int(bad.any(dim=-1).nonzero()[0, 0]) if ids.dim() > 1 else 0
            value = int(ids.reshape(-1)[bad.reshape(-1).nonzero()[0, 0]])
            raise ValueError(f"candidate id {value} (row {row}) is outside the policy's catalog [0, {n_items}): "
                             "the observation comes from another catalog than the one the policy was trained on")
    return ids


def mlp(in_dim: int, hidden: int, n_layers: int, activation_fn: type[nn.Module]) -> nn.Sequential:
    """``n_layers`` × (Linear, activation): (…, in_dim) → (…, hidden)."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(n_layers):
        layers += [nn.Linear(dim, hidden), activation_fn()]
        dim = hidden
    return nn.Sequential(*layers)


class RunningStandardiser(nn.Module):
    """``(x − mean) / sqrt(var + eps)`` per column, with a mean and variance running over the rows joined to them.

    Rows join only through :meth:`update` (Chan's pooled mean and variance; once ``horizon`` rows have been seen, the
    past counts as ``horizon`` rows, so the statistics follow a drifting input over about that many); the forward
    pass only standardises, in training and eval mode alike, so a rollout's collection and its update can read the
    same statistics (``SlatePolicy.join_input_statistics``). The statistics are buffers: they travel with
    ``state_dict`` (checkpoints, the collector's copy) and are constants of an exported graph. Before any row has
    joined it is the identity (to ``eps``).

    Args:
        dim: Columns.
        horizon: Rows after which the past keeps a fixed weight.
        eps: Added to the variance.
    """

    mean: th.Tensor
    var: th.Tensor
    count: th.Tensor

    def __init__(self, dim: int, horizon: float = 1e6, eps: float = 1e-8) -> None:
        super().__init__()
        if dim < 1 or not horizon >= 1 or not eps > 0:
            raise ValueError(f"RunningStandardiser needs dim >= 1, horizon >= 1 and eps > 0, got {dim}, {horizon}, "
                             f"{eps}")
        self.horizon, self.eps = float(horizon), float(eps)
        self.register_buffer("mean", th.zeros(dim))
        self.register_buffer("var", th.ones(dim))
        self.register_buffer("count", th.zeros(()))

    @th.no_grad()
    def update(self, x: th.Tensor) -> None:
        """Join the rows of ``x`` (…, dim) to the statistics."""
        rows = x.detach().reshape(-1, self.mean.shape[0]).to(self.mean.dtype)
        n = float(rows.shape[0])
        if n == 0:
            return
        batch_mean = rows.mean(dim=0)
        batch_var = (rows - batch_mean).square().mean(dim=0)
        past = self.count.clamp(max=self.horizon)
        total = past + n
        delta = batch_mean - self.mean
        self.var.copy_((self.var * past + batch_var * n + delta.square() * past * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.copy_(total.clamp(max=self.horizon))

    @property
    def empty(self) -> bool:
        """No row has joined the statistics yet."""
        return bool(self.count == 0)

    def forward(self, x: th.Tensor) -> th.Tensor:
        """(…, dim) → (…, dim), standardised by the current statistics."""
        return (x - self.mean) / (self.var + self.eps).sqrt()


def refuse_nonfinite_weights(module: nn.Module, step: int) -> None:
    """Raise if an update left any of ``module``'s parameters NaN or infinite (one read of the device for all).

    PPO's update on an accelerator does not check its minibatches' logits (``SlatePolicy.update_checks_inputs``);
    this check after each update keeps a diverged update from reaching a checkpoint or a callback.

    Args:
        module: The trained policy.
        step: The run's step count, for the message.

    Raises:
        FloatingPointError: Naming the first parameters affected.
    """
    named = list(module.named_parameters())
    if not named:
        return
    bad = th.stack([~th.isfinite(p.detach()).all() for _, p in named])
    if bool(bad.any()):
        names = [name for (name, _), b in zip(named, bad.tolist(), strict=True) if b]
        raise FloatingPointError(
            f"the PPO update at step {step:,} left non-finite weights ({', '.join(names[:4])}"
            f"{', ...' if len(names) > 4 else ''}): the policy's weights diverged; lower the learning rate or raise "
            "the temperature, and resume from an earlier checkpoint")
