"""Load, merge, validate and dump configs: dataclasses for code, YAML for values, CLI overrides on top.

Unknown keys and wrong types are errors naming the key path; nothing is ever ``eval``-ed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from configs.fileio import atomic_dir, atomic_write_bytes, atomic_write_text
from configs.schema import Config, ConfigError, EnvConfig, FieldError

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parent
#: The named presets: ``configs/presets/<name>.yaml``.
PRESET_DIR = CONFIG_DIR / "presets"

#: A number in exponent notation without the dot or the exponent's sign that YAML 1.1 (PyYAML) requires for a float:
#: ``1e6``, ``3e-4``, ``-2.5E3``. Read as a number where the schema asks for one.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

# atomic_dir / atomic_write_*: defined in configs.fileio, still importable from here (the old path).
__all__ = ["CONFIG_DIR", "PRESET_DIR", "ConfigError", "apply_overrides", "atomic_dir", "atomic_write_bytes",
           "atomic_write_text", "check_output_dir", "deep_merge", "from_dict", "load_config", "preset_data",
           "preset_env", "read_yaml_mapping", "resolve_config", "save_yaml", "to_dict"]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless (int → float)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: may not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} fits none of {tp}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp in (int, float) and isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        value = float(value)  # "1e6", "3e-4": YAML 1.1 reads them as strings; people write them as numbers
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Args:
        cls: A config dataclass.
        data: Nested mapping (e.g. parsed YAML). Missing keys keep their defaults.
        path: Key path prefix used in error messages.

    Returns:
        The dataclass instance.

    Raises:
        ConfigError: On an unknown key, a value of the wrong type or out of range (the dataclasses check their
            own ranges); the message names the key path.
    """
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or "config"
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except FieldError as exc:  # a range check of the dataclass itself: name the full key path
        raise ConfigError(f"{path}.{exc.key}: {exc.detail}" if path else str(exc)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a plain nested dict (for YAML, JSON and TensorBoard hparams)."""
    return dataclasses.asdict(cfg)


def _parse_scalar(text: str) -> Any:
    """Parse a CLI override value with YAML's scalar rules (numbers, booleans, null, lists), never eval."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:  # pragma: no cover - yaml is very permissive for scalars
        raise ConfigError(f"cannot parse override value {text!r}: {exc}") from exc


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a nested dict in place.

    Args:
        data: Nested mapping to modify.
        overrides: Strings like ``env.slate_size=5`` or ``train.ppo.n_epochs=2``.

    Returns:
        ``data``, modified.

    Raises:
        ConfigError: If an override is not of the form ``key=value``.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(raw)
    return data


def load_config(path: str | os.PathLike[str] | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Load a complete config as saved: the schema's defaults, then a YAML file, then ``key=value`` overrides.

    No preset lookup: this is for configs written by recfeed (a run's ``config.yaml``), whose ``env`` section is
    already resolved. Scripts reading a user's config go through :func:`resolve_config`.

    Args:
        path: YAML file (values only). ``None``: the embedded defaults.
        overrides: ``key.path=value`` strings applied last.

    Returns:
        The validated :class:`configs.schema.Config`.

    Raises:
        ConfigError: On a missing or unreadable file, invalid YAML, unknown keys, wrong types or values out of
            range.
    """
    data = read_yaml_mapping(path) if path is not None else {}
    apply_overrides(data, overrides)
    return from_dict(Config, data)


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, recursively where both sides hold a mapping (neither argument is modified).

    The one merge of nested config dicts (presets, ``--set`` layers, calibration's fitted values and overrides).
    """
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def preset_data(name: str) -> dict[str, Any]:
    """The env values of a preset, as a mapping.

    Args:
        name: ``"default"``, ``"small"`` (``configs/presets/<name>.yaml``), or a calibrated preset directory
            written by ``python -m envs.calibrate`` (it holds ``env.yaml`` and ``world/``; ``preset_dir`` is set to
            its absolute path).

    Returns:
        The preset's ``env`` mapping.

    Raises:
        ConfigError: For an unknown preset (listing the known ones), a directory without ``env.yaml``, or a
            preset file that cannot be read.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"env.preset: expected a preset name or directory, got {name!r}")
    folder = Path(name)
    if folder.is_dir():
        path = folder / "env.yaml"
        if not path.is_file():
            raise ConfigError(f"env.preset: {folder} is not a preset directory: it has no env.yaml (make one with "
                              "python -m envs.calibrate)")
    else:
        if "/" in name or os.sep in name:
            raise ConfigError(f"env.preset: preset directory {name!r} does not exist")
        path = PRESET_DIR / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
            raise ConfigError(f"env.preset: unknown preset {name!r}; known presets: {known}, or a calibrated preset "
                              "directory")
    data = read_yaml_mapping(path)
    if folder.is_dir():
        data["preset_dir"] = str(folder.resolve())
    return data


def preset_env(name: str, overrides: dict[str, Any] | None = None) -> EnvConfig:
    """The env config of a preset, with optional overrides (a nested mapping of EnvConfig values) on top.

    Raises:
        ConfigError: Unknown preset, or a bad value (naming the ``env.`` key).
    """
    return from_dict(EnvConfig, deep_merge(preset_data(name), overrides or {}), "env")


def resolve_config(config_path: str | os.PathLike[str] | None = None, preset: str | None = None,
                   overrides: typing.Iterable[str] = (), flags: dict[str, Any] | None = None,
                   env_base: dict[str, Any] | None = None, encoder_base: dict[str, Any] | None = None) -> Config:
    """The one resolver of a script's config: preset → config file → ``--set`` → command-line flags.

    The ``env`` section starts from a preset's YAML: ``preset`` (a ``--preset`` flag), else ``env.preset`` from the
    file or ``--set``, else ``env_base`` when given (evaluate.py: a run's own env), else ``default``. The config
    file's other ``env`` values, then ``--set env.*``, then ``flags`` apply on top of it; every other section
    starts from the schema's defaults (``encoder`` from ``encoder_base`` when given). The result is validated
    (unknown keys, types, ranges), so nothing has been built when a value is wrong.

    Args:
        config_path: YAML config (values only), or ``None``.
        preset: The ``--preset`` flag: a preset name or a calibrated preset directory (wins over ``env.preset``).
        overrides: ``key.path=value`` strings (``--set``).
        flags: Nested mapping of values from dedicated command-line flags, applied after ``overrides``.
        env_base: The ``env`` mapping to start from when no preset is named (``None``: the ``default`` preset).
        encoder_base: The ``encoder`` mapping to start from (``None``: the schema's defaults).

    Returns:
        The validated config.

    Raises:
        ConfigError: Missing, unreadable or invalid file; unknown preset; unknown key; wrong type; value out of
            range. The message names the file or the key path.
    """
    data = read_yaml_mapping(config_path) if config_path is not None else {}
    apply_overrides(data, overrides)
    data = deep_merge(data, flags or {})
    for section in ("env", "encoder"):
        if not isinstance(data.setdefault(section, {}), dict):
            raise ConfigError(f"{section}: expected a mapping, got {data[section]!r}")
    env = dict(data["env"])
    named = preset or env.pop("preset", None)
    env.pop("preset", None)
    if named is not None:
        base = preset_data(named)
    elif env_base is not None:
        base = dict(env_base)
    else:
        base = preset_data("default")
    data["env"] = deep_merge(base, env)
    if encoder_base is not None:
        data["encoder"] = deep_merge(encoder_base, data["encoder"])
    return from_dict(Config, data)


def read_yaml_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (an empty file is an empty mapping).

    Raises:
        ConfigError: Missing file, a folder, an unreadable or non-UTF-8 file, invalid YAML, or something other
            than a mapping at top level; one line naming the file.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a folder, not a YAML file")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {_yaml_problem(exc)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at top level, got {type(loaded).__name__}")
    bad = [k for k in loaded if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config file {str(p)!r}: top-level keys must be names, got {bad[0]!r}")
    return loaded


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line out of a YAML error: the problem and where (PyYAML's own message spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{exc.problem or exc.context}{where}"
    return " ".join(str(exc).split())


def check_output_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Check, before any work, that ``path`` can be (or is) a folder recfeed may write into.

    Args:
        path: The folder (it need not exist yet).
        what: How the user named it, for the message (``"--out"``, ``"eval.out"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``path`` or one of its parents is a file, or the nearest existing parent is not writable.
    """
    p = Path(path)
    if not str(path).strip():
        raise ConfigError(f"{what}: empty path")
    probe = p
    while not probe.exists():
        if probe.is_symlink():
            raise ConfigError(f"{what} {str(p)!r}: {str(probe)!r} is a dangling symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{what} {str(p)!r}: {str(probe)!r} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(p)!r}: folder {str(probe)!r} is not writable")
    return p


def save_yaml(data: Any, path: str | os.PathLike[str]) -> None:
    """Write a config (dataclass or dict) as YAML atomically (temp file + rename)."""
    if dataclasses.is_dataclass(data):
        data = to_dict(data)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
