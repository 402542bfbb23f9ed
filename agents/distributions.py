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
Plackett-Luce. Sampling is then sequential (fresh Gumbel noise per position), and the log-probability, mode and
entropy follow the same sequence; all stay exact.

Without repulsion, sampling uses the Gumbel-top-K trick: ``top_k(s + G)`` with i.i.d. standard Gumbel noise
``G`` is an exact Plackett-Luce sample, in one vectorised call. The uniforms behind ``G`` are drawn from
``self.generator`` when one is set (see :meth:`PlackettLuceDistribution.set_generator`; it must live on
the logits' device), else from torch's default RNG (which SB3 seeds through ``set_random_seed``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch as th
from stable_baselines3.common.distributions import Distribution
from torch import nn

EntropyEstimator = Literal["sample", "mode"]


class PlackettLuceDistribution(Distribution):
    """Plackett-Luce over ranked slates of ``slate_size`` distinct candidates out of ``n_candidates``.

    Parameterised by logits (B, N) and an optional boolean mask (B, N) of valid candidates. Actions are
    int64 (B, K) positions into the N candidates; :meth:`log_prob` accepts any numeric dtype (SB3's rollout
    buffer hands MultiDiscrete actions back as float32) and casts with ``.long()``.

    **Entropy.** The exact entropy sums over N!/(N-K)! slates and is intractable. :meth:`entropy` returns the
    chain-rule estimate along one slate ``x``::

        H_hat = sum_k H( softmax(s over candidates not in x_1..x_{k-1}) )

    With ``entropy_estimator="sample"`` (default) ``x`` is a fresh Gumbel-top-K sample, so by the chain rule
    ``E_x[H_hat] = H(P)``: an unbiased estimate of the entropy's value. Gradients flow through the
    conditional softmaxes only (not through the choice of ``x``), so the gradient is that of the
    "path-wise" conditional entropies, a standard, well-behaved exploration bonus for PPO. With
    ``"mode"`` ``x`` is the top-K by logits: deterministic, biased (it is the entropy of the most likely
    path's conditionals), no extra random draws.

    Args:
        n_candidates: N.
        slate_size: K (``K <= N``).
        generator: Optional ``torch.Generator`` for sampling (on the logits' device).
        entropy_estimator: ``"sample"`` or ``"mode"`` (see above).
    """

    def __init__(
        self,
        n_candidates: int,
        slate_size: int,
        generator: th.Generator | None = None,
        entropy_estimator: EntropyEstimator = "sample",
    ) -> None:
        super().__init__()
        if not 1 <= slate_size <= n_candidates:
            raise ValueError(f"slate_size must be in [1, n_candidates={n_candidates}], got {slate_size}")
        if entropy_estimator not in ("sample", "mode"):
            raise ValueError(f"entropy_estimator must be 'sample' or 'mode', got {entropy_estimator!r}")
        self.n_candidates = int(n_candidates)
        self.slate_size = int(slate_size)
        self.generator = generator
        self.entropy_estimator: EntropyEstimator = entropy_estimator
        self.logits: th.Tensor | None = None  # (B, N), masked entries at -inf
        self.groups: th.Tensor | None = None  # (B, N) int64 group of each candidate
        self.repulsion: th.Tensor | None = None  # (B,) β >= 0

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
                           repulsion: th.Tensor | None = None) -> PlackettLuceDistribution:
        """Set the distribution's parameters.

        Args:
            logits: (B, N) candidate scores.
            mask: Optional (B, N) boolean, True for valid candidates; invalid ones get ``-inf``. Every row
                needs at least K valid candidates.
            groups: Optional (B, N) int64 group ids in ``[0, G)`` for within-slate repulsion.
            repulsion: (B,) β >= 0, required with ``groups``.

        Returns:
            self.

        Raises:
            ValueError: Wrong shapes, or a row with fewer than K valid candidates.
        """
        if logits.ndim != 2 or logits.shape[1] != self.n_candidates:
            raise ValueError(f"logits must have shape (B, {self.n_candidates}), got {tuple(logits.shape)}")
        if mask is not None:
            if mask.shape != logits.shape:
                raise ValueError(f"mask must have shape {tuple(logits.shape)}, got {tuple(mask.shape)}")
            mask = mask.bool()
            short = mask.sum(dim=1) < self.slate_size
            if bool(short.any()):
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
        return self

    def _steps(self, path: th.Tensor | None = None, noise: bool = False) -> Iterator[tuple[int, th.Tensor]]:
        """Walk the K positions: yield ``(k, effective logits over the remaining candidates (B, N))`` and advance
        along ``path`` (B, K) — or, when ``path`` is None, along the argmax (plus fresh Gumbel noise if
        ``noise``), recording the picks in ``self._walked``."""
        logits = self._require_logits()
        b = logits.shape[0]
        neg_inf = th.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
        placed = th.zeros_like(logits, dtype=th.bool)
        counts = None
        if self.groups is not None:
            n_groups = int(self.groups.max().item()) + 1 if self.groups.numel() else 1
            counts = th.zeros(b, n_groups, dtype=logits.dtype, device=logits.device)
        picks = []
        for k in range(self.slate_size):
            eff = logits
            if counts is not None and self.repulsion is not None:
                eff = logits - self.repulsion.unsqueeze(1) * counts.gather(1, self.groups)
            eff = eff.masked_fill(placed, neg_inf)
            yield k, eff
            if path is not None:
                a_k = path[:, k : k + 1]
            else:
                with th.no_grad():
                    key = eff.detach() + self._gumbel(eff) if noise else eff.detach()
                    a_k = key.argmax(dim=1, keepdim=True)
                picks.append(a_k)
            placed = placed.scatter(1, a_k, True)
            if counts is not None:
                counts = counts.scatter_add(1, self.groups.gather(1, a_k), th.ones_like(a_k, dtype=counts.dtype))
        self._walked = th.cat(picks, dim=1) if picks else None

    def _walk(self, noise: bool) -> th.Tensor:
        for _ in self._steps(noise=noise):
            pass
        assert self._walked is not None
        return self._walked

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
            return self._walk(noise=True)
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
            return self._walk(noise=False)
        with th.no_grad():
            return th.topk(logits.detach(), self.slate_size, dim=1).indices

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        """Exact log-probability of ranked slates.

        ``log P(a) = sum_k [ s_{a_k} - logsumexp(s_j : j not in a_1..a_{k-1}) ]``, vectorised over B (a loop
        over K only). A slate that repeats a candidate or picks a masked one gets ``-inf``.

        Args:
            actions: (B, K) candidate positions, any numeric dtype (float32 from SB3's buffer is fine).

        Returns:
            (B,) log-probabilities, differentiable in the logits.
        """
        logits = self._require_logits()
        actions = actions.reshape(-1, self.slate_size).long()
        if actions.shape[0] != logits.shape[0]:
            raise ValueError(f"actions batch {actions.shape[0]} != logits batch {logits.shape[0]}")
        total = th.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
        for k, remaining in self._steps(path=actions):  # remaining: (B, N), -inf for placed / masked
            total = total + remaining.gather(1, actions[:, k : k + 1]).squeeze(1) - th.logsumexp(remaining, dim=1)
        return total

    def _path_entropy(self, path: th.Tensor) -> th.Tensor:
        """Sum over k of the entropy of the k-th conditional softmax along ``path`` (B, K) → (B,)."""
        logits = self._require_logits()
        total = th.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
        for _, remaining in self._steps(path=path):
            logp = th.log_softmax(remaining, dim=1)
            p = logp.exp()
            logp = logp.masked_fill(th.isinf(remaining), 0.0)  # 0·log 0 = 0, without NaN gradients
            total = total - (p * logp).sum(dim=1)
        return total

    def entropy(self) -> th.Tensor:
        """Tractable slate-entropy estimate (see the class docstring: chain rule along one slate).

        Returns:
            (B,) estimate, differentiable in the logits.
        """
        path = self.sample() if self.entropy_estimator == "sample" else self.mode()
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
