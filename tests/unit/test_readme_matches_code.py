"""The README's config table and command list, and docs/CLI.md, match the code.

A config key or a command added without documenting it (or documented and then
removed from the code) fails here: the settings come from
``queuectl.proto.config.SETTINGS``, the commands from walking the typer app.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer

from queuectl.cli.app import app
from queuectl.proto import config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CLI_DOC = (ROOT / "docs" / "CLI.md").read_text()
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole line) up to the next heading of its level."""
    level = heading.split(" ", 1)[0]
    match = re.search(rf"^{re.escape(heading)}$", text, re.MULTILINE)
    assert match, f"no heading {heading!r}"
    rest = text[match.end():]
    following = re.search(rf"^{level} ", rest, re.MULTILINE)
    return rest[:following.start()] if following else rest


def table(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``text``, as stripped cells."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    assert start is not None, "no table"
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append(line)
    assert len(block) > 2 and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", block[1]), "not a table"
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in block[2:]]


def unquote(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`"), f"expected `code` in {cell!r}"
    return cell[1:-1]


def leaf_commands() -> dict[str, object]:
    """Every runnable command of ``queuectl`` by its path ("dlq retry"), groups walked."""
    found: dict[str, object] = {}

    def walk(command: object, path: list[str]) -> None:
        children = getattr(command, "commands", None)
        if children is None:
            found[" ".join(path)] = command
            return
        for name, child in children.items():
            walk(child, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def long_options(command: Any) -> set[str]:  # a click.Command
    return {name for param in command.params if param.param_type_name == "option"
            for name in (*param.opts, *param.secondary_opts) if name.startswith("--")}


COMMANDS = leaf_commands()
DEFAULTS = {name: json.dumps(setting.default) for name, setting in config.SETTINGS.items()}


def test_the_walk_finds_nested_commands():
    # The walk itself must see groups, or the checks below would prove nothing.
    assert {"enqueue", "dlq list", "config set", "queue pause", "worker start",
            "keys init"} <= set(COMMANDS)


def test_the_readme_config_table_is_the_code_settings_with_their_defaults():
    rows = table(section(README, "## Configuration"))
    documented = {unquote(row[0]): unquote(row[1]) for row in rows}
    assert len(documented) == len(rows), "a key is listed twice"
    assert documented == DEFAULTS


def test_the_cli_reference_config_table_has_every_key_default_and_rule():
    rows = table(section(CLI_DOC, "## queuectl config show"))
    documented = {unquote(row[0]): (unquote(row[1]), row[2]) for row in rows}
    assert documented == {name: (DEFAULTS[name], setting.rule)
                          for name, setting in config.SETTINGS.items()}


def test_examples_of_config_output_are_what_the_code_prints():
    shown = re.search(r"^\$ queuectl config show --json\n(.+)$", CLI_DOC, re.MULTILINE)
    assert shown and json.loads(shown.group(1)) == config.defaults()
    known = re.findall(r"known keys: ([a-z_, ]+)\)", README + CLI_DOC)
    assert known and all(keys == ", ".join(sorted(config.SETTINGS)) for keys in known)


def test_every_config_alias_is_documented():
    for alias in config.ALIASES:
        spelled = alias.replace("_", "-")
        assert spelled in README and spelled in CLI_DOC, alias


def test_the_readme_command_list_is_every_command_and_only_those():
    rows = table(section(README, "## Commands"))
    listed = [unquote(row[0]) for row in rows]
    assert len(listed) == len(set(listed)), "a command is listed twice"
    assert set(listed) == set(COMMANDS)
    for row in rows:
        path, arguments = unquote(row[0]), row[1]
        unknown = set(OPTION.findall(arguments)) - long_options(COMMANDS[path])
        assert not unknown, f"README lists {sorted(unknown)} for {path}, which it does not take"


def test_the_cli_reference_has_a_section_per_command_with_every_option():
    headings = re.findall(r"^## queuectl (.+)$", CLI_DOC, re.MULTILINE)
    assert len(headings) == len(set(headings)), "a command has two sections"
    assert set(headings) == set(COMMANDS)
    for path, command in COMMANDS.items():
        text = section(CLI_DOC, f"## queuectl {path}")
        missing = {name for name in long_options(command) if name not in OPTION.findall(text)}
        assert not missing, f"docs/CLI.md does not document {sorted(missing)} of {path}"
