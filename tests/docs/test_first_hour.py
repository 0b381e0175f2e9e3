"""The README and docs/protocol.md as a new user follows them in order: every command id is
new (the service applies an id once per club, across matches), the password is one variable
(``$PASSWORD``), the command one path (``.venv/bin/rallycast``), every publish names its user,
and the README lists every document, subcommand and top-level part."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rallycast.cli import SUBCOMMANDS
from tests.test_architecture import LAYERS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
ID_RE = re.compile(r'"id": "([^"]+)", "cmd"')  # commands, not the reply examples


def code_blocks(text: str) -> str:
    """The lines inside fenced blocks (any language)."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return "\n".join(lines)


def test_command_ids_are_new_across_the_readme_and_the_protocol_examples():
    readme_ids = ID_RE.findall(code_blocks(README))
    protocol_ids = ID_RE.findall(code_blocks(PROTOCOL))
    assert readme_ids and protocol_ids
    assert not set(readme_ids) & set(protocol_ids)
    for ids in (readme_ids, protocol_ids):
        assert len(ids) == len(set(ids)), ids
    # Not the ids `rallycast up` printed before (s1, p1) nor ones a reader would pick first.
    assert all(re.fullmatch(r"(readme|proto)-\w+", i) for i in readme_ids + protocol_ids)
    assert "new id per press" in README and "new id per press" in PROTOCOL


@pytest.mark.parametrize("name", ["README.md", "docs/protocol.md"])
def test_one_password_variable_and_one_command_path(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    assert not re.search(r"\$PASS\b", text)
    for line in code_blocks(text).splitlines() + re.findall(r"`([^`]+)`", text):
        command = line.strip().lstrip("|").strip()
        # A command to type starts with the venv's path (./dev up does not put it on PATH).
        assert not re.match(r"rallycast (score|replay|passwd|scorer|viewer|broker) ", command), line


@pytest.mark.parametrize("name", ["README.md", "docs/protocol.md"])
def test_every_publish_names_its_user(name):
    # Anonymous may publish nothing: a publish without -u/-P is refused.
    text = (ROOT / name).read_text(encoding="utf-8")
    for command in re.findall(r"mosquitto_pub -[^`\n]*", text):
        assert " -u " in command and " -P " in command, command


def test_the_readme_lists_every_document_subcommand_and_part():
    documents = README.split("## Documents", 1)[1]
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"`docs/{doc.name}`" in documents, doc.name
    commands = README.split("has one subcommand per job", 1)[1].split("\n\n", 1)[0]
    for name in SUBCOMMANDS:
        assert f"`{name}`" in commands, name
    where = README.split("## What is where", 1)[1].split("\n## ", 1)[0]
    for part in ("deploy/", "nats/", "docs/", "tests/", "mosquitto.conf", "mosquitto.acl",
                 ".ci/run", "pyproject.toml", "dev", "tests/test_architecture.py"):  # fmt: skip
        assert f"`{part}" in where, part


@pytest.mark.parametrize("package", LAYERS)
def test_what_is_where_names_every_module_of_each_floor(package):
    """The architecture at a glance stays true: each floor's table names each of its modules
    (a new module gets its row, a moved one leaves it)."""
    where = README.split("## What is where", 1)[1].split("\n## ", 1)[0]
    table = where.split(f"**`{package}/`**", 1)[1].split("\n**", 1)[0]
    for module in sorted((ROOT / package).rglob("*.py")):
        relative = module.relative_to(ROOT / package)
        if "node_modules" in relative.parts or relative == Path("__init__.py"):
            continue
        assert f"`{module.name}`" in table, f"README, What is where: {package}/{relative}"
        if len(relative.parts) > 1:
            assert f"`{relative.parts[0]}/`" in table, f"{package}/{relative.parts[0]}/"
    for name in (ROOT / package).iterdir():
        if name.is_dir() and name.name not in ("__pycache__", "node_modules"):
            assert f"`{name.name}/" in table, f"README, What is where: {package}/{name.name}/"


def test_the_readme_says_the_password_is_printed_once_and_how_to_score_from_a_laptop():
    assert "--url mqtt://HOST:1883" in README
