"""PPO's update with one host read per update instead of several per minibatch (both backends' update).

SB3's ``PPO.train`` (2.9) reads five values back to the host in every minibatch (``.item()`` of the policy, value
and entropy losses and of the clip fraction, ``.cpu().numpy()`` of the approximate KL), and its
``DictRolloutBuffer`` gathers each minibatch in numpy and copies every array of it to the training device. On an
accelerator each read makes the host wait for the device and each copy from pageable memory is a synchronous
transfer, so the host cannot queue a minibatch's kernels while the previous one runs (session 32 measured 17.2
synchronisations and 9 host→device copies per update minibatch on an H200; BENCHMARKS.md, "GPU"). On the CPU they
cost a numpy gather and a copy per array.

- :class:`DeviceDictRolloutBuffer`: the rollout moves to the training device once per update (on the CPU the tensors
  share the buffer's arrays: no copy), each epoch's permutation once per epoch, and each minibatch is gathered there.
  The permutation is SB3's own draw (``np.random.permutation``), so the minibatches are SB3's, value for value.
- :func:`ppo_update`: SB3's update, operation for operation (the weights it leaves are SB3's bit for bit, tested),
  with its statistics kept on the device and read once at the end, then one check that the weights are finite
  (:func:`agents.policy_ops.refuse_nonfinite_weights`). With ``target_kl`` set the approximate KL is still read per
  minibatch: the early stop is a host decision. Both backends' ``train`` is this function.

Everything else (the rollout loop, GAE, the logger's keys and their meaning) stays SB3's; the logged means are
computed in float64 on the device rather than by numpy over Python floats (equal to float rounding).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from agents.policy_ops import refuse_nonfinite_weights


@dataclass
class LinearRate:
    """A learning rate going linearly from ``start`` to ``end`` over a run (``train.ppo.learning_rate_end``).

    An SB3 schedule: called at the start of every update with SB3's ``progress_remaining``, the share of
    ``train.total_timesteps`` still to come once the update's rollout is collected (the last update sees 0). A run
    stopped by ``train.max_minutes`` usually ends far from its step count, so :class:`agents.callbacks.TimeLimit` sets
    ``wall_clock`` when learning starts and the progress is then whichever is further, the steps or the minutes.

    Attributes:
        start: The rate when the run starts (SB3's ``progress_remaining`` 1).
        end: The rate when it ends (``progress_remaining`` 0, or the deadline).
        wall_clock: ``(time.perf_counter() at the start, seconds allowed)``, or ``None`` (steps only).
    """

    start: float
    end: float
    wall_clock: tuple[float, float] | None = None

    def remaining(self, progress_remaining: float) -> float:
        """The share of the run still to come, in [0, 1], from SB3's step count and the wall clock."""
        left = float(progress_remaining)
        if self.wall_clock is not None:
            t0, seconds = self.wall_clock
            left = min(left, 1.0 - (time.perf_counter() - t0) / seconds)
        return min(max(left, 0.0), 1.0)

    def __call__(self, progress_remaining: float) -> float:
        return self.end + (self.start - self.end) * self.remaining(progress_remaining)


#: The rollout's per-sample arrays besides the observations (SB3's names), flattened by ``get``.
_ARRAYS = ("actions", "values", "log_probs", "advantages", "returns")


class DeviceDictRolloutBuffer(DictRolloutBuffer):
    """SB3's ``DictRolloutBuffer`` whose minibatches are gathered on the training device.

    Collection fills the same numpy arrays as SB3's (callbacks that read or rescale them before the update see no
    difference); the first ``get`` of an update flattens them as SB3 does and copies each to ``device`` once.
    """

    _on_device: DictRolloutBufferSamples | None

    def reset(self) -> None:
        """SB3's reset; the device copy of the previous rollout is dropped."""
        super().reset()
        self._on_device = None

    def get(self, batch_size: int | None = None) -> Generator[DictRolloutBufferSamples, None, None]:  # type: ignore[override]
        """The rollout in minibatches of ``batch_size`` (all of it in one when ``None``), in SB3's random order.

        Args:
            batch_size: Samples per minibatch (the last may be shorter).

        Yields:
            SB3's ``DictRolloutBufferSamples`` on ``self.device``: observations (batch, *obs_shape) per key,
            actions float32 (batch, action_dim), old_values / old_log_prob / advantages / returns (batch,).
        """
        assert self.full, "the rollout buffer is read before the rollout is complete"
        n = self.buffer_size * self.n_envs
        indices = np.random.permutation(n)  # SB3's draw, so that the minibatches are SB3's
        if not self.generator_ready:
            for key, obs in self.observations.items():
                self.observations[key] = self.swap_and_flatten(obs)
            for name in _ARRAYS:
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.generator_ready = True
        if self._on_device is None:
            self._on_device = self._to_device()
        order = th.as_tensor(indices, device=self.device)
        size = n if batch_size is None else batch_size
        for start in range(0, n, size):
            yield self._gather(order[start:start + size])

    def device_observations(self) -> dict[str, th.Tensor] | None:
        """The rollout's observations on ``self.device`` as this update gathered them (each key (n, …)), or ``None``
        before the update's first ``get``."""
        if self._on_device is None:
            return None
        assert isinstance(self._on_device.observations, dict)
        return self._on_device.observations

    def _to_device(self) -> DictRolloutBufferSamples:
        """The flattened rollout as tensors on ``self.device``: one copy per array (none on the CPU)."""
        def put(array: np.ndarray) -> th.Tensor:
            return th.as_tensor(array, device=self.device)

        return DictRolloutBufferSamples(
            observations={key: put(obs) for key, obs in self.observations.items()},
            actions=put(self.actions.astype(np.float32, copy=False)),  # SB3's cast
            old_values=put(self.values.reshape(-1)), old_log_prob=put(self.log_probs.reshape(-1)),
            advantages=put(self.advantages.reshape(-1)), returns=put(self.returns.reshape(-1)))

    def _gather(self, rows: th.Tensor) -> DictRolloutBufferSamples:
        """The samples at ``rows`` (int64 (batch,) on ``self.device``): new tensors, never views of the buffer."""
        data = self._on_device
        assert data is not None
        assert isinstance(data.observations, dict)
        def take(x: th.Tensor) -> th.Tensor:
            return x.index_select(0, rows)  # a new tensor; on the CPU faster than x[rows]

        return DictRolloutBufferSamples(
            observations={key: take(obs) for key, obs in data.observations.items()},
            actions=take(data.actions), old_values=take(data.old_values), old_log_prob=take(data.old_log_prob),
            advantages=take(data.advantages), returns=take(data.returns))


def new_rollout_buffer(model: PPO, cls: type[DictRolloutBuffer] = DeviceDictRolloutBuffer) -> DictRolloutBuffer:
    """An empty rollout buffer of class ``cls`` with ``model``'s sizes, spaces, device, γ and λ (as SB3 builds it).

    Args:
        model: The PPO the buffer is for (a ``Dict`` observation space).
        cls: :class:`DeviceDictRolloutBuffer`, or SB3's ``DictRolloutBuffer`` (benchmarks and tests compare them).
    """
    assert isinstance(model.observation_space, spaces.Dict), "recfeed's observations are a Dict space"
    return cls(model.n_steps, model.observation_space, model.action_space, device=model.device, gamma=model.gamma,
               gae_lambda=model.gae_lambda, n_envs=model.n_envs)


def ppo_update(model: PPO) -> None:
    """SB3's ``PPO.train`` on ``model``'s rollout buffer, reading the device once at the end (see the module
    docstring): the same epochs, minibatches, losses, gradient clipping and optimizer steps, the same logger keys;
    then the weights' finiteness check.

    Args:
        model: The PPO whose policy is updated (its rollout buffer full).

    Raises:
        FloatingPointError: The update left non-finite weights (:func:`agents.policy_ops.refuse_nonfinite_weights`).
    """
    policy = model.policy
    join = getattr(policy, "join_input_statistics", None)  # SlatePolicy: a standardised type-head input
    standardiser = getattr(policy, "type_standardiser", None)
    first_join = join is not None and standardiser is not None and standardiser.empty  # the run's first update
    if first_join:
        join(rollout_observations(model))
    policy.set_training_mode(True)
    model._update_learning_rate(policy.optimizer)
    progress = model._current_progress_remaining
    clip_range = float(model.clip_range(progress))  # type: ignore[operator]
    clip_range_vf = None if model.clip_range_vf is None else float(model.clip_range_vf(progress))  # type: ignore[operator]
    # per minibatch, on the device: entropy loss, policy-gradient loss, value loss, clip fraction, approximate KL
    rows: list[th.Tensor] = []
    last_epoch_start = 0  # SB3 logs the approximate KL of the last epoch only
    loss: th.Tensor | None = None
    continue_training = True
    for epoch in range(model.n_epochs):
        last_epoch_start = len(rows)
        for data in model.rollout_buffer.get(model.batch_size):
            actions = data.actions
            if isinstance(model.action_space, spaces.Discrete):
                actions = data.actions.long().flatten()
            values, log_prob, entropy = policy.evaluate_actions(data.observations, actions)
            values = values.flatten()
            advantages = data.advantages
            if model.normalize_advantage and len(advantages) > 1:  # SB3: no normalisation of a batch of one
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            ratio = th.exp(log_prob - data.old_log_prob)
            policy_loss_1 = advantages * ratio
            policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
            policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()
            clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float())
            if clip_range_vf is None:
                values_pred = values
            else:
                values_pred = data.old_values + th.clamp(values - data.old_values, -clip_range_vf, clip_range_vf)
            value_loss = F.mse_loss(data.returns, values_pred)
            entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
            loss = policy_loss + model.ent_coef * entropy_loss + model.vf_coef * value_loss
            with th.no_grad():
                log_ratio = log_prob - data.old_log_prob
                approx_kl = th.mean((th.exp(log_ratio) - 1) - log_ratio)
                rows.append(th.stack([entropy_loss, policy_loss, value_loss, clip_fraction, approx_kl]).detach())
            if model.target_kl is not None and float(approx_kl) > 1.5 * model.target_kl:  # the one per-batch read
                continue_training = False
                if model.verbose >= 1:
                    print(f"Early stopping at step {epoch} due to reaching max kl: {float(approx_kl):.2f}")
                break
            policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
            policy.optimizer.step()
        model._n_updates += 1
        if not continue_training:
            break

    assert loss is not None, "the rollout buffer yielded no minibatch"
    stats = th.stack(rows).double()
    read = th.cat([stats[:, :4].mean(dim=0), stats[last_epoch_start:, 4].mean().reshape(1),
                   loss.detach().double().reshape(1)]).tolist()  # the update's one read of the device
    entropy_mean, pg_mean, value_mean, clip_mean, kl_mean, last_loss = read
    buf = model.rollout_buffer
    model.logger.record("train/entropy_loss", entropy_mean)
    model.logger.record("train/policy_gradient_loss", pg_mean)
    model.logger.record("train/value_loss", value_mean)
    model.logger.record("train/approx_kl", kl_mean)
    model.logger.record("train/clip_fraction", clip_mean)
    model.logger.record("train/loss", last_loss)
    model.logger.record("train/explained_variance", explained_variance(buf.values.flatten(), buf.returns.flatten()))
    if hasattr(policy, "log_std"):
        model.logger.record("train/std", th.exp(policy.log_std).mean().item())
    model.logger.record("train/n_updates", model._n_updates, exclude="tensorboard")
    model.logger.record("train/clip_range", clip_range)
    if clip_range_vf is not None:
        model.logger.record("train/clip_range_vf", clip_range_vf)
    refuse_nonfinite_weights(policy, model.num_timesteps)  # before a rollout, callback or checkpoint uses them
    if join is not None and standardiser is not None and not first_join:  # the next collection and its update
        join(rollout_observations(model))  # read the same statistics


def rollout_observations(model: PPO) -> dict[str, th.Tensor]:
    """The rollout buffer's observations as tensors on the policy's device, each key (n_steps · n_envs, …) (before
    or after the buffer flattened them; the row order does not matter to statistics). After an update's first
    minibatch a :class:`DeviceDictRolloutBuffer` already holds them there: no second copy."""
    buffer = model.rollout_buffer
    on_device = buffer.device_observations() if isinstance(buffer, DeviceDictRolloutBuffer) else None
    if on_device is not None:
        return on_device
    space = model.policy.observation_space
    obs = buffer.observations
    assert isinstance(obs, dict) and isinstance(space, spaces.Dict)
    return {key: th.as_tensor(np.asarray(value).reshape(-1, *space[key].shape), device=model.policy.device)
            for key, value in obs.items()}
