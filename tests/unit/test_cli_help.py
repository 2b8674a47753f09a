"""Every command's --help ends with examples; wait's lists its exit codes; completion scripts
for bash and zsh come from the parser itself."""

from __future__ import annotations

import argparse

import pytest

from backupjobd.cli import build_parser, main


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, (*prefix, name))
                out.extend(nested or [(*prefix, name)])
    return out


COMMANDS = _commands(build_parser())


def test_the_walk_finds_every_command() -> None:
    assert {("wait",), ("jobs", "list"), ("replicas",), ("completion",)} <= set(COMMANDS)
    assert len(COMMANDS) >= 14


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_examples(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "\nexamples:\n  " in out and "backupjobd" in out.split("\nexamples:\n")[1]


def test_wait_help_lists_its_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["wait", "--help"])
    out = capsys.readouterr().out
    for line in ("  0    Completed", "  4    Failed", "  6    lost", "  124  --timeout passed"):
        assert line in out


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "backupjobd" in script and "replicas" in script and "--output" in script
