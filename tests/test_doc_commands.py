"""Every command that the README and ``docs/`` show still parses as written.

Flags and config keys change under documentation that nothing else checks. This test reads each ``python -m
MODULE …`` / ``python SCRIPT.py …`` line of the fenced code blocks and inline code spans of ``README.md`` and
``docs/*.md``, runs the module as ``python -m`` would (``runpy``) with ``argparse.ArgumentParser.parse_args`` stopped
right after it parsed, and checks that the module exists, that its parser takes the flags and values as written, that
each ``--set KEY=VALUE`` names a config key and a value of its type, and that each ``--config configs/…`` file is in
the repository. Nothing is trained, read or written.

Left out: lines that show a grammar rather than a command (``[--opt]``, ``a|b``, ``…``), upper-case placeholder
modules (``bench.NAME``) and inline spans that only name a tool (``python -m envs.calibrate``). Placeholders in values
(``RUN_DIR``, ``runs/<run>``) are strings to the parsers; the seed placeholder ``S`` is read as 0.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from configs.loader import ConfigError, from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

#: A command: an optional interpreter path, then ``python -m MODULE`` or ``python SCRIPT.py``, then its arguments.
_COMMAND = re.compile(r"(?:^|\s)(?:[\w./-]*/)?python\s+"
                      r"(?:-m\s+(?P<module>[\w.]+)|(?P<script>[\w/]+\.py))(?P<rest>.*)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+)`")
#: Marks of a usage grammar, not a command to run.
_GRAMMAR = ("[", "|", "…", "──▶")
#: Placeholders that a numeric argument takes as written in the docs (``--tune-seed S``).
_NUMERIC_PLACEHOLDERS = {"S": "0"}


@dataclass(frozen=True)
class DocCommand:
    """One documented command line.

    Attributes:
        where: ``FILE:LINE`` of the line in the docs.
        target: The module (``-m``) or script path.
        is_module: Whether ``target`` is a module.
        argv: The arguments after the module or script.
    """

    where: str
    target: str
    is_module: bool
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: python {'-m ' if self.is_module else ''}{self.target} {' '.join(self.argv)}"


def _candidate_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, whether fenced) of each code line and inline code span of a Markdown document."""
    fenced: set[int] = set()
    for block in _FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        fenced.update(range(first, first + block.group(1).count("\n") + 1))
        joined, start = "", first
        for i, line in enumerate(block.group(1).splitlines()):
            if not joined:
                start = first + i
            if line.endswith("\\"):  # a shell continuation: the command goes on on the next line
                joined += line[:-1] + " "
                continue
            yield start, joined + line, True
            joined = ""
    for n, line in enumerate(text.splitlines(), start=1):
        if n in fenced:
            continue
        for span in _SPAN.finditer(line):
            yield n, span.group(1), False


def doc_commands(paths: tuple[Path, ...] = DOCS) -> list[DocCommand]:
    """Every runnable recfeed command in ``paths`` (see the module docstring for what is left out)."""
    found: list[DocCommand] = []
    for path in paths:
        for n, line, fenced in _candidate_lines(path.read_text(encoding="utf-8")):
            m = _COMMAND.search(line)
            if m is None:
                continue
            target = m.group("module") or m.group("script")
            rest = m.group("rest").split(" #", 1)[0].strip().removesuffix("&")  # a shell comment, a background job
            if any(mark in rest for mark in _GRAMMAR) or target != target.lower():
                continue
            if not fenced and not rest:
                continue  # prose naming a tool, not a command line
            found.append(DocCommand(f"{path.name}:{n}", target, bool(m.group("module")),
                                    tuple(_NUMERIC_PLACEHOLDERS.get(a, a) for a in shlex.split(rest))))
    return found


class _Parsed(Exception):
    """Raised by the patched ``parse_args`` once the command line parsed: the module's work never starts."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


def _parse_only(cmd: DocCommand, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Run ``cmd`` up to its ``parse_args`` and return what it parsed; a parser error fails with its message."""
    real = argparse.ArgumentParser.parse_args

    def stop_after_parsing(self: argparse.ArgumentParser, args: Sequence[str] | None = None,
                           namespace: argparse.Namespace | None = None) -> NoReturn:
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after_parsing)
    monkeypatch.setattr(sys, "argv", [cmd.target, *cmd.argv])
    environ = dict(os.environ)
    try:
        with warnings.catch_warnings():
            # runpy warns when the module was imported before (by another test): harmless here.
            warnings.simplefilter("ignore", RuntimeWarning)
            if cmd.is_module:
                runpy.run_module(cmd.target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(ROOT / cmd.target), run_name="__main__")
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as exc:
        pytest.fail(f"{cmd}\n  its parser refused it (exit {exc.code}); see the captured stderr")
    finally:  # a module may set thread variables at import (bench.ope_validation): keep them out of later tests
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)
    pytest.fail(f"{cmd}\n  ran without parsing a command line with argparse")


def _check_sets(cmd: DocCommand, ns: argparse.Namespace) -> None:
    """Each ``--set KEY=VALUE`` of ``cmd`` names a key of the config its command reads, with a value it takes."""
    sets = list(getattr(ns, "overrides", None) or getattr(ns, "set", None) or [])
    if not sets:
        return
    if cmd.target == "envs.calibrate":
        from configs.data import CalibrationConfig, PreprocessConfig
        from envs.calibrate.cli import _parse_sets

        sections = _parse_sets(sets)
        from_dict(CalibrationConfig, sections.pop("calibrate", {}), "calibrate")
        from_dict(PreprocessConfig, sections.pop("preprocess", {}), "preprocess")
        sets = [s for s in sets if s.split(".", 1)[0] in ("env", "encoder")]
    elif cmd.target == "envs.update":
        sets = [f"env.{s}" for s in sets]  # its keys are the world's env section
    load_config(None, sets)


COMMANDS = doc_commands()


def test_the_docs_show_commands_of_every_kind() -> None:
    """The extraction finds the README's quickstart commands, so an empty or broken reading cannot pass."""
    shown = {(c.target, c.argv[:2]) for c in COMMANDS}
    assert ("train.py", ("--config", "configs/smoke.yaml")) in shown
    assert any(c.target == "envs.calibrate" for c in COMMANDS)
    assert len({c.target for c in COMMANDS}) >= 20


def test_a_renamed_flag_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check fails on a flag the parser does not have and on a config key the schema does not have."""
    with pytest.raises(pytest.fail.Exception, match="refused"):
        _parse_only(DocCommand("x:1", "train.py", False, ("--no-such-flag",)), monkeypatch)
    ns = _parse_only(DocCommand("x:1", "train.py", False, ("--set", "train.ppo.n_epochz=2")), monkeypatch)
    with pytest.raises(ConfigError, match="n_epochz"):
        _check_sets(DocCommand("x:1", "train.py", False, ()), ns)


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_documented_command_parses(cmd: DocCommand, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module or script exists, its parser takes the arguments as written, and its ``--set`` keys are real."""
    ns = _parse_only(cmd, monkeypatch)
    _check_sets(cmd, ns)
    config = getattr(ns, "config", None)
    if isinstance(config, str) and config.startswith("configs/"):
        assert (ROOT / config).is_file(), f"{cmd}: {config} is not in the repository"
