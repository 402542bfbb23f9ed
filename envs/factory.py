"""``make_core``: the :class:`~envs.core.BatchedCore` of a preset or config over one population of its world
(loading or building the world when none is given); behind both envs, training, the baselines and evaluation."""

from __future__ import annotations

from configs.schema import EncoderConfig, EnvConfig
from envs.core import BatchedCore
from envs.presets import load_world, preset_config
from envs.world import World


def make_core(config: EnvConfig | None, preset: str, encoder: EncoderConfig | None, world: World | None,
              population: str | None, batch_size: int) -> BatchedCore:
    """A batched core of ``batch_size`` rows over ``population`` of a world.

    Args:
        config: Env config (wins over ``preset``).
        preset: Preset name, used when ``config`` is None.
        encoder: Encoder config: builds the world when none is given, and encodes prompts in text mode.
        world: A ready world (else loaded from the cache or built).
        population: ``"train"`` / ``"heldout"`` (default ``config.users``).
        batch_size: B.

    Returns:
        The core (its rows not started yet).
    """
    cfg = config if config is not None else preset_config(preset)
    text_encoder = None
    if cfg.obs_mode == "text" or world is None:
        from encoders.factory import make_encoder

        text_encoder = make_encoder(encoder or EncoderConfig())
    if world is None:
        world = load_world(cfg, encoder, encoder=text_encoder)
    return BatchedCore(world, cfg, batch_size, population=population,
                       text_encoder=text_encoder if cfg.obs_mode == "text" else None)
