"""Plackett-Luce distribution over ranked slates, as a stable-baselines3 ``Distribution``.

A slate is K distinct positions into the request's N candidates, in rank order. Under Plackett-Luce with
per-candidate logits ``s`` (B, N), the slate ``a = (a_1, …, a_K)`` has probability

    P(a) = prod_k exp(s_{a_k}) / sum_{j not in {a_1, …, a_{k-1}}} exp(s_j)

i.e. the top item is drawn from ``softmax(s)``, the second from the softmax over what is left, and so on.
Masked candidates (``mask`` False) get ``s = -inf``: probability zero at every step.

**Within-slate repulsion (optional).** With candidate groups ``g`` (B, N) (e.g. categories) and a strength
``β`` (B,) >= 0, the k-th pick is drawn from ``softmax(s_j − β·c_k(g_j))`` over the candidates not yet placed,
where ``c_k(g)`` counts the earlier picks of group ``g``: every repeat of a group lowers its later chances, so the
policy can express "diverse slates" that independent per-candidate scores cannot. ``β = 0`` is plain
Plackett-Luce. All of sampling, log-probability, mode and entropy stay exact.

**Soft category cap (optional).** With ``category_cap = c*`` a group that already fills ``c*`` slots takes a further
``CAP_PENALTY`` nats (30: a factor e^-30 ≈ 1e-13) at every later step: the slate-level rule "at most c* per
category" of the diversity heuristics (``agents.baselines.DiverseRanker``), as a penalty of the same per-group
form, so every computation below is unchanged in shape and stays exact. It is soft, not a mask, so a row whose
unplaced candidates are all in full groups still has a distribution (the heuristic's "unless nothing else is
left"); a candidate in a full group outranks one in an open group only when its logit is over 30 higher.

**How it is computed.** Within a group every unplaced candidate carries the same penalty, so each step's
normaliser is a sum over the G groups of ``exp(−β·c_k(g))`` times the group's unplaced mass: the log-probability
and the path entropy cost O(B·K·G) after one O(B·N) pass (per-group sums of ``exp`` logits, in float64), instead
of K softmaxes over N (on CPU that per-group arithmetic, forward and backward, is a compiled loop,
:class:`_PathTermsCPU`). Sampling with repulsion goes group first: a group ∝ its repulsion-weighted unplaced mass,
then a candidate of that group ∝ ``exp(s_j)`` among its unplaced ones (on CPU a compiled loop,
:mod:`agents._pl_kernels`; elsewhere torch ops with a Gumbel order per group). The mode is the greedy walk.
Without repulsion, sampling uses the Gumbel-top-K trick: ``top_k(s + G)`` with i.i.d. standard Gumbel noise
``G`` is an exact Plackett-Luce sample, in one vectorised call. Uniforms are drawn from ``self.generator`` when
one is set (see :meth:`PlackettLuceDistribution.set_generator`; it must live on the logits' device), else from
torch's default RNG (which SB3 seeds through ``set_random_seed``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch as th
from stable_baselines3.common.distributions import Distribution
from torch import nn

EntropyEstimator = Literal["sample", "mode", "action"]


class _PathTermsCPU(th.autograd.Function):
    """:meth:`PlackettLuceDistribution._path_terms` on CPU, from the logits, by the compiled kernels
    :func:`agents._pl_kernels.path_terms_forward` / ``path_terms_backward``: one pass per row (the row's group sums
    over N, then the K steps over G), instead of ~60 torch ops over (B, N) and (B, K, G) tensors forward and as
    many backward. The same float64 operations (in the same order up to the sums over G) and their analytic
    gradient; the torch ops remain the reference and the path on other devices (tests compare values and
    gradients, and gradcheck the kernels).

    ``forward(logits (B, N), beta (B,), groups int64 (B, N), path int64 (B, K), n_groups, entropy: bool)`` →
    ``(log_p float64 (B, K), entropy float64 (B,) (zeros unless asked), invalid bool (B,))``.
    """

    @staticmethod
    def forward(ctx: Any, logits: th.Tensor, beta: th.Tensor, groups: th.Tensor, path: th.Tensor, n_groups: int,
                entropy: bool, cap: int = 1 << 30, cap_pen: float = 0.0) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        from agents._pl_kernels import path_terms_forward

        s = logits.detach().double().contiguous()
        bt = beta.detach().double().contiguous()
        groups, path = groups.contiguous(), path.contiguous()
        b, kk = path.shape
        if path.numel() and (int(path.min()) < 0 or int(path.max()) >= s.shape[1]):
            raise IndexError(f"slate positions must be in [0, {s.shape[1]})")
        log_p = th.empty((b, kk), dtype=th.float64)
        ent = th.zeros(b, dtype=th.float64)
        invalid = th.empty(b, dtype=th.bool)
        path_terms_forward(s.numpy(), groups.numpy(), bt.numpy(), path.numpy(), int(n_groups), bool(entropy),
                           log_p.numpy(), ent.numpy(), invalid.numpy(), int(cap), float(cap_pen))
        ctx.save_for_backward(s, bt, groups, path)
        ctx.n_groups, ctx.entropy, ctx.cap = int(n_groups), bool(entropy), (int(cap), float(cap_pen))
        ctx.dtypes = (logits.dtype, beta.dtype)
        ctx.mark_non_differentiable(invalid)
        return log_p, ent, invalid

    @staticmethod
    def backward(ctx: Any, grad_log_p: th.Tensor | None, grad_ent: th.Tensor | None,
                 _: th.Tensor | None) -> tuple[th.Tensor | None, ...]:
        from agents._pl_kernels import path_terms_backward

        s, bt, groups, path = ctx.saved_tensors
        b, kk = path.shape
        gl = th.zeros(b, kk, dtype=th.float64) if grad_log_p is None else grad_log_p.double().contiguous()
        gh = th.zeros(b, dtype=th.float64) if grad_ent is None else grad_ent.double().contiguous()
        d_s = th.empty_like(s)
        d_beta = th.empty_like(bt)
        path_terms_backward(s.numpy(), groups.numpy(), bt.numpy(), path.numpy(), ctx.n_groups, ctx.entropy,
                            gl.numpy(), gh.numpy(), d_s.numpy(), d_beta.numpy(), *ctx.cap)
        return d_s.to(ctx.dtypes[0]), d_beta.to(ctx.dtypes[1]), None, None, None, None, None, None


class PlackettLuceDistribution(Distribution):
    """Plackett-Luce over ranked slates of ``slate_size`` distinct candidates out of ``n_candidates``.

    Parameterised by logits (B, N) and an optional boolean mask (B, N) of valid candidates. Actions are
    int64 (B, K) positions into the N candidates; :meth:`log_prob` accepts any numeric dtype (SB3's rollout
    buffer hands MultiDiscrete actions back as float32) and casts with ``.long()``.

    **Entropy.** The exact entropy sums over N!/(N-K)! slates and is intractable. :meth:`entropy` returns the
    chain-rule estimate along one slate ``x``::

        H_hat = sum_k H( softmax(s over candidates not in x_1..x_{k-1}) )

    With ``entropy_estimator="sample"`` (default) ``x`` is a fresh sample of the distribution, so by the chain rule
    ``E_x[H_hat] = H(P)``: an unbiased estimate of the entropy's value. Gradients flow through the
    conditional softmaxes only (not through the choice of ``x``), so the gradient is that of the
    "path-wise" conditional entropies, a standard, well-behaved exploration bonus for PPO. With
    ``"mode"`` ``x`` is the top-K by logits: deterministic, biased (it is the entropy of the most likely
    path's conditionals), no extra random draws. With ``"action"`` ``x`` is the slate being scored: PPO's update asks
    for the log-probability of the rollout's slates, which the old policy sampled, and their path entropy comes out of
    the same pass (:meth:`log_prob_and_entropy`) at no extra cost. It is the ``"sample"`` estimate with the old
    policy's draw instead of a fresh one: unbiased in the first minibatch of an update, off by the PPO step after it
    (the ratio the clip keeps near 1). :meth:`entropy`, which has no slate to score, draws one as ``"sample"`` does.

    Args:
        n_candidates: N.
        slate_size: K (``K <= N``).
        generator: Optional ``torch.Generator`` for sampling (on the logits' device).
        entropy_estimator: ``"sample"``, ``"mode"`` or ``"action"`` (see above).
        category_cap: Soft cap on the picks per group (``None``: none); needs groups (see above).
    """

    #: Extra penalty (nats) of a group that has filled its cap.
    CAP_PENALTY = 30.0

    def __init__(
        self,
        n_candidates: int,
        slate_size: int,
        generator: th.Generator | None = None,
        entropy_estimator: EntropyEstimator = "sample",
        category_cap: int | None = None,
    ) -> None:
        super().__init__()
        if category_cap is not None and category_cap < 1:
            raise ValueError(f"category_cap must be >= 1 or None, got {category_cap}")
        if not 1 <= slate_size <= n_candidates:
            raise ValueError(f"slate_size must be in [1, n_candidates={n_candidates}], got {slate_size}")
        if entropy_estimator not in ("sample", "mode", "action"):
            raise ValueError(f"entropy_estimator must be 'sample', 'mode' or 'action', got {entropy_estimator!r}")
        self.n_candidates = int(n_candidates)
        self.slate_size = int(slate_size)
        self.generator = generator
        self.entropy_estimator: EntropyEstimator = entropy_estimator
        self.logits: th.Tensor | None = None  # (B, N), masked entries at -inf
        self.groups: th.Tensor | None = None  # (B, N) int64 group of each candidate
        self.repulsion: th.Tensor | None = None  # (B,) β >= 0
        self._stats: tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor, th.Tensor | None] | None = None
        self._groups_count: int | None = None
        self._stats_have_grad = False
        self.use_compiled = True  # on CPU, path terms and sampling by the compiled kernels (False: the torch ops)
        self.category_cap = None if category_cap is None else int(category_cap)

    def _cap_args(self) -> tuple[int, float]:
        """``(cap, cap_pen)`` for the compiled kernels (no cap: an unreachable count and no penalty)."""
        if self.category_cap is None or self.groups is None:
            return 1 << 30, 0.0
        return self.category_cap, self.CAP_PENALTY

    def _penalty(self, beta: th.Tensor | None, counts: th.Tensor) -> th.Tensor | float:
        """Effective-logit penalty of a group with ``counts`` earlier picks: ``β·c`` plus the cap's penalty once
        ``c >= category_cap`` (broadcast; ``beta`` shaped to match ``counts``)."""
        pen: th.Tensor | float = 0.0 if beta is None else beta * counts
        if self.category_cap is not None and self.groups is not None:
            pen = pen + self.CAP_PENALTY * (counts >= self.category_cap).to(counts.dtype if counts.is_floating_point()
                                                                            else th.float64)
        return pen

    def set_generator(self, generator: th.Generator | None) -> None:
        """Use ``generator`` (or, with ``None``, torch's default RNG) for all later sampling.

        Args:
            generator: A ``torch.Generator`` on the same device as the logits, or ``None``.
        """
        self.generator = generator

    def proba_distribution_net(self, latent_dim: int) -> nn.Module:
        """A linear head from a latent (B, latent_dim) to per-candidate logits (B, N).

        SB3 requires this method; :class:`agents.policies.SlatePolicy` does not use it (it scores every
        candidate with shared weights instead).

        Args:
            latent_dim: Width of the policy latent.

        Returns:
            ``nn.Linear(latent_dim, N)``.
        """
        return nn.Linear(latent_dim, self.n_candidates)

    def proba_distribution(self, logits: th.Tensor, mask: th.Tensor | None = None, groups: th.Tensor | None = None,
                           repulsion: th.Tensor | None = None, *, n_groups: int | None = None,
                           validate: bool = True) -> PlackettLuceDistribution:
        """Set the distribution's parameters.

        Args:
            logits: (B, N) candidate scores.
            mask: Optional (B, N) boolean, True for valid candidates; invalid ones get ``-inf``. Every row
                needs at least K valid candidates.
            groups: Optional (B, N) int64 group ids in ``[0, G)`` for within-slate repulsion.
            repulsion: (B,) β >= 0, required with ``groups``.
            n_groups: G, when the caller knows it (a bound on every group id plus one, such as the item → category
                table's); ``None``: read from ``groups`` when first needed (one read of the device).
            validate: Check the values: no NaN logit, at least K valid candidates per row. Each check reads the
                device; a caller whose inputs were already checked (PPO's update re-scoring the observations its
                collection checked) may skip them on an accelerator, and must then check the weights after the update
                (``agents.policy_ops.refuse_nonfinite_weights``): a NaN logit, which only weights made NaN earlier in
                the same update can produce there, is read as 0 so that sampling stays in range. Shapes are checked
                either way.

        Returns:
            self.

        Raises:
            ValueError: Wrong shapes, ``n_groups < 1``, or (with ``validate``) NaN logits or a row with fewer than
                K valid candidates.
        """
        if logits.ndim != 2 or logits.shape[1] != self.n_candidates:
            raise ValueError(f"logits must have shape (B, {self.n_candidates}), got {tuple(logits.shape)}")
        if n_groups is not None and n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        if validate and bool(th.isnan(logits.detach()).any()):  # the samplers would return no valid slate for it
            row = int(th.isnan(logits.detach()).any(dim=1).nonzero()[0, 0])
            raise ValueError(f"slate logits contain NaN (row {row}): the policy's weights diverged; lower the "
                             "learning rate or raise the temperature, and resume from an earlier checkpoint")
        if not validate:  # a NaN row draws an in-range slate (no out-of-range gather on a device) and its loss stays
            logits = th.where(th.isnan(logits), th.zeros_like(logits), logits)  # NaN through the other terms
        if mask is not None:
            if mask.shape != logits.shape:
                raise ValueError(f"mask must have shape {tuple(logits.shape)}, got {tuple(mask.shape)}")
            mask = mask.bool()
            short = mask.sum(dim=1) < self.slate_size if validate else None
            if short is not None and bool(short.any()):
                row = int(th.nonzero(short)[0, 0])
                raise ValueError(f"mask row {row} has fewer than slate_size={self.slate_size} valid candidates")
            logits = logits.masked_fill(~mask, float("-inf"))
        if (groups is None) != (repulsion is None):
            raise ValueError("groups and repulsion go together")
        if groups is not None and repulsion is not None:
            if groups.shape != logits.shape or repulsion.shape != logits.shape[:1]:
                raise ValueError(f"groups must be {tuple(logits.shape)} and repulsion ({logits.shape[0]},), got "
                                 f"{tuple(groups.shape)} and {tuple(repulsion.shape)}")
            groups = groups.long()
        self.logits, self.groups, self.repulsion = logits, groups, repulsion
        self._stats = None
        self._groups_count = None if groups is None else n_groups
        return self

    def _walk(self, with_log_prob: bool = False) -> tuple[th.Tensor, th.Tensor | None]:
        """The greedy walk (the mode with repulsion), without gradients.

        At step k the effective logits over the candidates not yet placed are ``s − β·c_k(g)`` (placed ones at
        ``-inf``); the pick is their argmax. Counts are exact small integers, so the effective logits equal
        ``agents.slate_mode.greedy_slates``' bit for bit.

        Args:
            with_log_prob: Also return the log-probability of the walked slate.

        Returns:
            ``(slates int64 (B, K), log-probabilities (B,) or None)``.
        """
        with th.no_grad():
            logits = self._require_logits().detach()
            b = logits.shape[0]
            groups = self.groups
            beta = None if self.repulsion is None else self.repulsion.detach().unsqueeze(1)  # (B, 1)
            counts = th.zeros_like(logits) if groups is not None else None  # (B, N) earlier picks of j's group
            placed = th.zeros_like(logits)  # (B, N): 0, or -inf once placed
            total = th.zeros(b, dtype=logits.dtype, device=logits.device) if with_log_prob else None
            picks = th.empty((b, self.slate_size), dtype=th.long, device=logits.device)
            for k in range(self.slate_size):
                if counts is not None and beta is not None:
                    eff = logits - self._penalty(beta, counts).to(logits.dtype) + placed
                else:
                    eff = logits + placed
                a_k = eff.argmax(dim=1, keepdim=True)
                if total is not None:
                    total += eff.gather(1, a_k).squeeze(1) - th.logsumexp(eff, dim=1)
                picks[:, k : k + 1] = a_k
                placed.scatter_(1, a_k, float("-inf"))
                if counts is not None and groups is not None:
                    counts += groups == groups.gather(1, a_k)
        return picks, total

    def _n_groups(self) -> int:
        """G: the number of candidate groups (1 without repulsion)."""
        if self.groups is None:
            return 1
        if self._groups_count is None:
            self._groups_count = int(self.groups.max().item()) + 1 if self.groups.numel() else 1
        return self._groups_count

    def _row_stats(self) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
        """Per-row quantities shared by :meth:`log_prob`, :meth:`entropy` and sampling (cached until the next
        :meth:`proba_distribution`; differentiable when computed with autograd on).

        Returns:
            ``(x, e, S, T, beta)``: float64 shifted logits ``x = s − max(s)`` (B, N) (masked: ``-inf``),
            ``e = exp(x)`` (B, N), per-group sums ``S_g = Σ_{j∈g} e_j`` and ``T_g = Σ_{j∈g} e_j·x_j`` (B, G), and
            β as float64 (B,) (None without repulsion).
        """
        grad = th.is_grad_enabled()
        if self._stats is None or (grad and not self._stats_have_grad):  # a no-grad cache cannot serve autograd
            self._stats_have_grad = grad
            logits = self._require_logits()
            s = logits.double()
            x = s - s.detach().max(dim=1, keepdim=True).values  # (B, N), max 0
            e = x.exp()  # masked: 0
            g = self._group_ids()
            n_g = self._n_groups()
            zeros = th.zeros(logits.shape[0], n_g, dtype=e.dtype, device=e.device)
            big_s = zeros.scatter_add(1, g, e)
            big_t = zeros.scatter_add(1, g, th.where(e > 0, x, 0.0) * e)  # no -inf·0
            beta = None if self.repulsion is None else self.repulsion.double()
            self._stats = (x, e, big_s, big_t, beta)
        return self._stats

    def _group_ids(self) -> th.Tensor:
        """(B, N) int64 group of each candidate (all 0 without repulsion)."""
        logits = self._require_logits()
        if self.groups is None:
            return th.zeros(logits.shape, dtype=th.long, device=logits.device)
        return self.groups

    def _path_terms(self, path: th.Tensor, entropy: bool) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """The K conditional softmaxes along ``path`` (B, K), computed per group instead of per candidate.

        At step k the effective logit of an unplaced candidate j is ``x_j − β·c_k(g_j)``, constant within a group,
        so the normaliser is ``Z_k = Σ_g exp(−β·c_k(g))·S_g^(k)`` with ``S_g^(k)`` the group's mass not placed
        before k (``S_g`` minus an exclusive cumulative sum of the path's picks, in float64: exact enough while a
        row's logits span less than ~30 nats, which :class:`agents.policies.SlatePolicy` ensures; at 60 nats what is
        left after the best picks is rounding noise and the entropy blows up) and, for the entropy,
        ``H_k = log Z_k − Σ_g exp(−β·c_k(g))·(T_g^(k) − β·c_k(g)·S_g^(k)) / Z_k``.
        The same quantities as a softmax over the N candidates per step, at O(B·K·G) instead of O(B·K·N).

        Args:
            path: int64 (B, K) candidate positions.
            entropy: Also compute the entropy terms.

        Returns:
            ``(log_p (B, K) per step, entropy (B,) or zeros, invalid (B,) bool)``; ``invalid`` marks paths that
            repeat a candidate or pick a masked one (probability zero).
        """
        logits = self._require_logits()
        if logits.device.type == "cpu" and self.use_compiled:
            g = self._group_ids()
            beta_in = self.repulsion if self.repulsion is not None else th.zeros(logits.shape[0], dtype=logits.dtype)
            return _PathTermsCPU.apply(logits, beta_in, g, path, self._n_groups(), entropy, *self._cap_args())
        x, e, big_s, big_t, beta = self._row_stats()
        b, n = x.shape
        kk = self.slate_size
        n_g = big_s.shape[1]
        g = self._group_ids()
        steps = th.arange(kk, device=x.device)
        first = th.full((b, n), kk, dtype=th.long, device=x.device).scatter_reduce(
            1, path, steps.expand(b, kk), reduce="amin")  # (B, N) first position of each candidate in path
        x_a = x.gather(1, path)  # (B, K)
        invalid = (first.gather(1, path) < steps).any(dim=1) | th.isneginf(x_a).any(dim=1)
        g_a = g.gather(1, path)  # (B, K)
        e_a = th.where(invalid.unsqueeze(1), 0.0, e.gather(1, path))  # (B, K); invalid paths remove nothing
        xe_a = th.where(invalid.unsqueeze(1), 0.0, e_a * th.where(th.isneginf(x_a), 0.0, x_a)) if entropy else None
        onehot = (g_a.unsqueeze(2) == th.arange(n_g, device=x.device)).to(x.dtype)  # (B, K, G)
        pad = th.zeros(b, 1, n_g, dtype=x.dtype, device=x.device)

        def before(v: th.Tensor) -> th.Tensor:  # exclusive cumulative sum over K of (B, K, G)
            return th.cat([pad, v[:, :-1].cumsum(dim=1)], dim=1)

        s_k = (big_s.unsqueeze(1) - before(onehot * e_a.unsqueeze(2))).clamp(min=0.0)  # (B, K, G)
        if beta is None:
            w = None
            c_a = None
            z = s_k.sum(dim=2)
        else:
            counts = before(onehot)  # (B, K, G) earlier picks per group (exact integers)
            pen = self._penalty(beta.view(b, 1, 1), counts)  # (B, K, G)
            w = th.exp(-pen)
            z = (w * s_k).sum(dim=2)
            c_a = counts.gather(2, g_a.unsqueeze(2)).squeeze(2)  # (B, K)
        log_z = z.clamp(min=1e-300).log()  # (B, K); Z_k > 0 for valid paths
        eff_a = x_a if c_a is None or beta is None else x_a - self._penalty(beta.unsqueeze(1), c_a)
        log_p = eff_a - log_z
        ent = th.zeros(b, dtype=x.dtype, device=x.device)
        if xe_a is not None:
            t_k = big_t.unsqueeze(1) - before(onehot * xe_a.unsqueeze(2))  # (B, K, G)
            if w is None or beta is None:
                mean_eff = t_k.sum(dim=2) / z.clamp(min=1e-300)
            else:
                mean_eff = (w * (t_k - pen * s_k)).sum(dim=2) / z.clamp(min=1e-300)
            ent = (log_z - mean_eff).sum(dim=1)
        return log_p, ent, invalid

    def _sample_groups_cpu(self, with_log_prob: bool) -> tuple[th.Tensor, th.Tensor | None]:
        """:meth:`_sample_groups` on CPU, by the compiled kernel :func:`agents._pl_kernels.sample_groups`: the same
        two-stage draw, except that the candidate within the group is drawn by inverse CDF over its unplaced
        ``exp`` logits (a second uniform per row and step) instead of from a Gumbel order (a sort of (B, N))."""
        from agents._pl_kernels import sample_groups

        logits = self._require_logits()
        with th.no_grad():
            x = logits.detach().double()
            x = (x - x.max(dim=1, keepdim=True).values).numpy()
            b = x.shape[0]
            groups = self._group_ids().numpy()
            beta = (np.zeros(b) if self.repulsion is None
                    else self.repulsion.detach().double().numpy())
            u = th.rand((b, self.slate_size, 2), generator=self.generator, dtype=th.float64).numpy()
            picks = np.empty((b, self.slate_size), np.int64)
            log_prob = np.empty(b)
            sample_groups(np.ascontiguousarray(x), np.ascontiguousarray(groups), beta, u, self._n_groups(), picks,
                          log_prob, *self._cap_args())
        return th.from_numpy(picks), th.from_numpy(log_prob).to(logits.dtype) if with_log_prob else None

    def _sample_groups(self, with_log_prob: bool) -> tuple[th.Tensor, th.Tensor | None]:
        """An exact sample of the repulsive Plackett-Luce, group first (no gradient).

        Within a group every unplaced candidate has the same penalty, so the k-th pick is: a group with
        probability ∝ ``exp(−β·c_k(g))·S_g^(k)`` (one uniform per row and step, inverse CDF over G), then the next
        candidate of that group in a Gumbel-perturbed order ``x_j + Gumbel`` drawn once per candidate. That
        order is a plain Plackett-Luce ranking of the group, so its next unplaced candidate is drawn ∝ ``e_j``
        among the group's unplaced ones, whatever happened before: the pair is the conditional softmax.

        Args:
            with_log_prob: Also return the log-probability of the sample.

        Returns:
            ``(int64 (B, K), (B,) log-probabilities in the logits' dtype or None)``.
        """
        if self._require_logits().device.type == "cpu" and self.use_compiled:
            return self._sample_groups_cpu(with_log_prob)
        return self._sample_groups_torch(with_log_prob)

    def _sample_groups_torch(self, with_log_prob: bool) -> tuple[th.Tensor, th.Tensor | None]:
        """:meth:`_sample_groups` in torch ops (any device; the within-group order from Gumbel keys)."""
        with th.no_grad():
            x, e, big_s, _, beta = (t.detach() if t is not None else None for t in self._row_stats())
            b = x.shape[0]
            kk = self.slate_size
            n_g = big_s.shape[1]
            g = self._group_ids()
            rows = th.arange(b, device=x.device)
            key = x.to(self._require_logits().dtype) + self._gumbel(x.to(self._require_logits().dtype))
            by_key = th.sort(key, dim=1, descending=True, stable=True).indices  # (B, N)
            by_group = th.sort(g.gather(1, by_key), dim=1, stable=True).indices
            order = by_key.gather(1, by_group)  # (B, N): by group, then by key (masked last within their group)
            valid = th.isfinite(x)
            n_valid = th.zeros(b, n_g, dtype=th.long, device=x.device).scatter_add(1, g, valid.long())  # (B, G)
            start = th.zeros(b, n_g, dtype=th.long, device=x.device).scatter_add(1, g, th.ones_like(g))
            start = start.cumsum(dim=1) - start  # (B, G) first slot of each group in `order`
            mass = big_s.clone()  # (B, G) unplaced mass
            counts = th.zeros(b, n_g, dtype=th.long, device=x.device)
            u = th.rand((b, kk), generator=self.generator, device=x.device, dtype=x.dtype)
            picks = th.empty((b, kk), dtype=th.long, device=x.device)
            total = th.zeros(b, dtype=x.dtype, device=x.device) if with_log_prob else None
            for k in range(kk):
                weight = mass.clamp(min=0.0)  # (B, G)
                if beta is not None:
                    weight = weight * th.exp(-self._penalty(beta.unsqueeze(1), counts.to(x.dtype)))
                weight = th.where(counts < n_valid, weight, 0.0)  # a group whose valid candidates are all placed
                cum = weight.cumsum(dim=1)  # (B, G)
                grp = th.searchsorted(cum, u[:, k : k + 1] * cum[:, -1:], right=True).clamp_(max=n_g - 1)
                # a group of zero weight is drawn only by float rounding when u is within 2^-53 of 1: take the last
                # group of positive weight instead (always computed: testing for it first would wait for the device)
                bad = weight.gather(1, grp) <= 0
                last = th.where(weight > 0, th.arange(n_g, device=x.device), -1).argmax(1, keepdim=True)
                grp = th.where(bad, last, grp)
                c_g = counts.gather(1, grp)  # (B, 1)
                item = order.gather(1, start.gather(1, grp) + c_g)  # (B, 1)
                picks[:, k : k + 1] = item
                if total is not None:
                    pen = 0.0 if beta is None else self._penalty(beta.unsqueeze(1), c_g.to(x.dtype))
                    total += (x.gather(1, item) - pen - cum[:, -1:].log()).squeeze(1)
                mass.scatter_add_(1, grp, -e.gather(1, item))
                counts[rows, grp.squeeze(1)] += 1
        return picks, None if total is None else total.to(self._require_logits().dtype)

    def _require_logits(self) -> th.Tensor:
        if self.logits is None:
            raise RuntimeError("call proba_distribution(logits) first")
        return self.logits

    def _gumbel(self, logits: th.Tensor) -> th.Tensor:
        """Standard Gumbel noise (B, N) from the generator (or the default RNG)."""
        u = th.rand(logits.shape, generator=self.generator, device=logits.device, dtype=logits.dtype)
        u = u.clamp_(min=th.finfo(logits.dtype).tiny)  # rand is in [0, 1): only 0 needs a guard
        return -th.log(-th.log(u))

    def sample(self) -> th.Tensor:
        """A Plackett-Luce slate per row by Gumbel-top-K.

        Returns:
            int64 (B, K) distinct candidate positions, in rank order.
        """
        logits = self._require_logits()
        if self.groups is not None:
            return self._sample_groups(with_log_prob=False)[0]
        with th.no_grad():
            keys = logits.detach() + self._gumbel(logits)
            return th.topk(keys, self.slate_size, dim=1).indices

    def mode(self) -> th.Tensor:
        """The most likely slate: the top-K candidates by logit, in decreasing order.

        Returns:
            int64 (B, K).
        """
        logits = self._require_logits()
        if self.groups is not None:
            return self._walk()[0]
        with th.no_grad():
            return th.topk(logits.detach(), self.slate_size, dim=1).indices

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        """Exact log-probability of ranked slates.

        ``log P(a) = sum_k [ s_{a_k} - logsumexp(s_j : j not in a_1..a_{k-1}) ]`` (with repulsion, ``s`` is the
        step's effective logits), vectorised over B and K. A slate that repeats a candidate or picks a masked
        one gets ``-inf``.

        Args:
            actions: (B, K) candidate positions, any numeric dtype (float32 from SB3's buffer is fine).

        Returns:
            (B,) log-probabilities, differentiable in the logits (and β).
        """
        return self._scored(actions, entropy=False)[0]

    def log_prob_and_entropy(self, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """:meth:`log_prob` of ``actions`` and the entropy estimate, as PPO's update needs them.

        With ``entropy_estimator="action"`` the estimate is the path entropy along ``actions`` itself, from the
        same pass over the slates as the log-probability (see the class docstring); otherwise :meth:`entropy`.

        Args:
            actions: (B, K) candidate positions, any numeric dtype.

        Returns:
            ``(log_prob (B,), entropy (B,))``, both differentiable in the logits (and β).
        """
        if self.entropy_estimator != "action":
            return self.log_prob(actions), self.entropy()
        return self._scored(actions, entropy=True)

    def _scored(self, actions: th.Tensor, entropy: bool) -> tuple[th.Tensor, th.Tensor]:
        """Log-probabilities (B,) of ``actions`` (B, K) and their path entropies (B,) (zeros unless asked)."""
        logits = self._require_logits()
        actions = actions.reshape(-1, self.slate_size).long().to(logits.device)  # slates may come from the host
        if actions.shape[0] != logits.shape[0]:
            raise ValueError(f"actions batch {actions.shape[0]} != logits batch {logits.shape[0]}")
        log_p, ent, invalid = self._path_terms(actions, entropy=entropy)
        return log_p.sum(dim=1).to(logits.dtype).masked_fill(invalid, float("-inf")), ent.to(logits.dtype)

    def sample_with_log_prob(self, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor]:
        """Slates (B, K) and their log-probabilities (B,) in one pass (what a rollout needs).

        With repulsion, the sampling walk already computes every conditional softmax, so the log-probability
        comes with it (no gradient: use :meth:`log_prob` when one is needed, as it is whenever autograd is on).

        Args:
            deterministic: The mode instead of a sample.

        Returns:
            ``(int64 (B, K), (B,))``.
        """
        logits = self._require_logits()
        if th.is_grad_enabled() and logits.requires_grad:
            actions = self.get_actions(deterministic=deterministic)
            return actions, self.log_prob(actions)
        if deterministic and self.groups is not None:
            actions, log_prob = self._walk(with_log_prob=True)
        elif not deterministic and self.groups is not None:
            actions, log_prob = self._sample_groups(with_log_prob=True)
        else:
            actions = self.get_actions(deterministic=deterministic)
            log_prob = self.log_prob(actions)
        assert log_prob is not None
        return actions, log_prob

    def _path_entropy(self, path: th.Tensor) -> th.Tensor:
        """Sum over k of the entropy of the k-th conditional softmax along ``path`` (B, K) → (B,)."""
        logits = self._require_logits()
        return self._path_terms(path.to(logits.device), entropy=True)[1].to(logits.dtype)

    def entropy(self) -> th.Tensor:
        """Tractable slate-entropy estimate (see the class docstring: chain rule along one slate).

        Returns:
            (B,) estimate, differentiable in the logits.
        """
        path = self.mode() if self.entropy_estimator == "mode" else self.sample()
        return self._path_entropy(path)

    def actions_from_params(
        self, logits: th.Tensor, mask: th.Tensor | None = None, deterministic: bool = False
    ) -> th.Tensor:
        """Slates from logits (B, N) and optional mask (B, N): int64 (B, K)."""
        self.proba_distribution(logits, mask)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(
        self, logits: th.Tensor, mask: th.Tensor | None = None
    ) -> tuple[th.Tensor, th.Tensor]:
        """A sampled slate (B, K) and its log-probability (B,) from logits (B, N) and optional mask (B, N)."""
        actions = self.actions_from_params(logits, mask)
        return actions, self.log_prob(actions)
