"""Every command and every option of ``trtbatch`` says what it is for."""

from __future__ import annotations

import click

from cli import cli


def _commands(group: click.Group, prefix: str = "trtbatch") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = [(prefix, group)]
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix} {name}")
        else:
            out.append((f"{prefix} {name}", cmd))
    return out


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, cmd in _commands(cli):
        if not (cmd.help or cmd.short_help):
            missing.append(f"{path}: no command help")
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.help and param.name != "help":
                missing.append(f"{path} {param.opts[-1]}")
    assert not missing, "\n".join(missing)
