"""The docs' ``nhl`` commands against the real CLI: every (sub)command exists, every flag is accepted.

A newcomer pastes README.md and docs/*.md command by command; a renamed flag or command there is a
bug users meet first. The commands are read from the fenced shell blocks (``bash``/``sh``/
``console``; a console block's commands are its ``$ `` lines), with ``\\`` continuations joined and
``&&``/``;``/``|`` chains split; ``torchrun ... -m nhlcli CMD`` and ``python -m nhlcli CMD`` count
as ``nhl CMD``. Each one is checked against click's view of the typer app, without running it.

The slow test at the end runs docs/tutorial.md for real, in order, on a small generated
Fashion-MNIST (``NHL_DATA``, as the README documents), so that every file a later step uses is one
an earlier step made.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import REPO, make_tiny_data

import nhlcli.cli

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)```\s*([\w-]*)\s*$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
OPERATORS = {"&&", "||", ";", "|", "&"}


@dataclass(frozen=True)
class DocCommand:
    """One shell command from a doc: where it starts and its text with continuations joined."""

    file: Path
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def shell_commands(path: Path) -> list[DocCommand]:
    """Every command line in ``path``'s fenced shell blocks, continuations joined."""
    commands: list[DocCommand] = []
    lang: str | None = None  # inside a fence: its language ("" for a bare fence)
    pending: tuple[int, str] | None = None  # a command continued with a trailing backslash
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = FENCE.match(raw)
        if fence:
            lang = None if lang is not None else fence.group(2).lower()
            pending = None
            continue
        if lang not in SHELL_LANGS:
            continue
        line = raw.strip()
        if pending is not None:
            start, text = pending
        elif lang == "console":
            if not line.startswith("$ "):
                continue  # a console block's output
            start, text, line = number, "", line[2:]
        else:
            start, text = number, ""
        if line.endswith("\\"):
            pending = (start, text + line[:-1] + " ")
            continue
        pending = None
        text += line
        if text.strip() and not text.lstrip().startswith("#"):
            commands.append(DocCommand(path, start, text))
    return commands


def simple_commands(text: str) -> list[list[str]]:
    """A command line's simple commands (split at ``&&``, ``;``, ``|``), comments dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token in OPERATORS:
            parts.append([])
        else:
            parts[-1].append(token)
    return [p for p in parts if p]


def nhl_arguments(words: list[str]) -> list[str] | None:
    """The arguments after ``nhl`` (or ``-m nhlcli``) in a simple command; ``None`` for other programs."""
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]  # OPENAI_API_KEY=... nhl ...
    for i, word in enumerate(words):
        if word == "nhl" and i == 0:
            return words[1:]
        if word == "nhlcli" and i > 0 and words[i - 1] == "-m":
            return words[i + 1 :]  # torchrun ... -m nhlcli ..., python -m nhlcli ...
    return None


# typer builds on its own copy of click, so commands and options are recognised by what they hold
def is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def takes_value(option: Any) -> bool:
    return not option.is_flag and not option.count


def check_arguments(args: list[str]) -> str | None:
    """Why ``nhl ARGS`` would be refused for its (sub)command or flags; ``None`` when it is accepted."""
    command = typer.main.get_command(nhlcli.cli.app)
    path = ["nhl"]
    i = 0
    while i < len(args):
        word = args[i]
        ctx = typer.Context(command, info_name=path[-1])
        options = {
            opt: param
            for param in command.get_params(ctx)
            if param.param_type_name == "option"
            for opt in (*param.opts, *param.secondary_opts)
        }
        if word == "--":
            break
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0] if word.startswith("--") else word
            param = options.get(name)
            if param is None and not word.startswith("--") and len(word) > 2:
                param = options.get(word[:2])  # -o/path: a short option with its value attached
                if param is not None and not takes_value(param):
                    param = None
                elif param is not None:
                    i += 1
                    continue
            if param is None:
                return f"{' '.join(path)} has no option {name}"
            if takes_value(param) and "=" not in word:
                i += 1  # its value, which may itself start with a dash
            i += 1
            continue
        if is_group(command):
            sub = command.get_command(ctx, word)
            if sub is None:
                return f"{' '.join(path)} has no command {word!r}"
            command, path = sub, [*path, word]
        i += 1
    if is_group(command) and args[-1:] != ["--help"]:
        return (
            f"{' '.join(path)} needs a command ({', '.join(command.list_commands(typer.Context(command)))})"
        )
    return None


def doc_nhl_commands() -> list[tuple[DocCommand, list[str]]]:
    found = []
    for path in DOCS:
        for command in shell_commands(path):
            for words in simple_commands(command.text):
                args = nhl_arguments(words)
                if args is not None:
                    found.append((command, args))
    return found


def test_the_parser_reads_continuations_chains_console_prompts_and_torchrun(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text `nhl not-a-block`\n"
        "```bash\n"
        "apt-get install x && nhl hierarchy list --json   # a comment --bogus\n"
        "torchrun --nproc_per_node=2 -m nhlcli train --data d \\\n"
        "    --epochs 2 -o m.safetensors\n"
        "# nhl commented --out\n"
        "OPENAI_API_KEY=... nhl eval m.safetensors --split=val\n"
        "```\n"
        "```console\n"
        "$ nhl predict m.safetensors a.png --top-k 3\n"
        "nhl output that is not a command --nope\n"
        "```\n"
        "```\n"
        "nhl hierarchy build  ->  tree.json\n"
        "```\n",
        encoding="utf-8",
    )
    commands = shell_commands(doc)
    assert [c.line for c in commands] == [3, 4, 7, 10]
    found = [args for c in commands for words in simple_commands(c.text) if (args := nhl_arguments(words))]
    assert found == [
        ["hierarchy", "list", "--json"],
        ["train", "--data", "d", "--epochs", "2", "-o", "m.safetensors"],
        ["eval", "m.safetensors", "--split=val"],
        ["predict", "m.safetensors", "a.png", "--top-k", "3"],
    ]
    assert all(check_arguments(args) is None for args in found)


def test_the_checker_names_a_bad_flag_or_command():
    assert check_arguments(["train", "--epochz", "2"]) == "nhl train has no option --epochz"
    assert check_arguments(["hierarchy", "bild", "-o", "t.json"]) == "nhl hierarchy has no command 'bild'"
    assert check_arguments(["gates"]).startswith("nhl gates needs a command")
    # a value that starts with a dash is the option's value, not a flag
    assert check_arguments(["gates", "tune", "g.safetensors", "--thresholds", "-1.2,inf"]) is None
    assert check_arguments(["export", "m.safetensors", "-o", "m.onnx", "--no-check"]) is None


def test_every_nhl_command_in_the_docs_uses_real_commands_and_flags():
    found = doc_nhl_commands()
    assert len(found) > 40  # the parser found the docs' commands
    bad = [f"{c.where}: {why}: {c.text.strip()}" for c, args in found if (why := check_arguments(args))]
    assert not bad, "docs use commands or flags the CLI does not accept:\n" + "\n".join(bad)


# --------------------------------------------------------------------------- the tutorial, run
# Machine setup the test environment has done already (CI: .ci/run): installing packages and WordNet.
SETUP = (
    re.compile(r"^(sudo\s+)?(apt-get|apt|pip|python -m pip)\b"),
    re.compile(r"^nhl hierarchy setup-wordnet\b"),
)


def tutorial_steps() -> list[DocCommand]:
    """The tutorial's command lines in order, as written, setup lines left out."""
    steps = []
    for command in shell_commands(REPO / "docs" / "tutorial.md"):
        setup = [any(p.match(shlex.join(words)) for p in SETUP) for words in simple_commands(command.text)]
        assert all(setup) or not any(setup), f"{command.where}: setup and tutorial steps on one line"
        if not any(setup):
            steps.append(command)
    return steps


@pytest.mark.slow
def test_the_tutorial_runs_end_to_end_in_a_fresh_directory(tmp_path):
    data = make_tiny_data.make_fashion_mnist_idx(tmp_path / "data", n_train=320, n_test=80)
    work = tmp_path / "work"
    work.mkdir()
    # `nhl` is this interpreter's nhlcli, whatever is first on PATH
    prelude = f'nhl() {{ {shlex.quote(sys.executable)} -m nhlcli "$@"; }}\n'
    env = {**os.environ, "NHL_DATA": str(data), "NHL_OFFLINE": "1", "COLUMNS": "200"}
    steps = tutorial_steps()
    assert steps[0].text.startswith("nhl demo") and len(steps) > 8
    started = time.perf_counter()
    for step in steps:
        run = subprocess.run(
            ["bash", "-c", prelude + step.text],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, f"{step.where}: {step.text}\n{run.stdout[-1500:]}\n{run.stderr[-1500:]}"
    assert time.perf_counter() - started < 600


# ----------------------------------------------------------------------- docs/api.md
API_ENTRY = re.compile(r"^- `from (\S+) import (\S+)`: `(.+)`$", flags=re.M)


def _annotation(value: Any) -> str:
    return value if isinstance(value, str) else inspect.formatannotation(value)


def signature_text(name: str, obj: Any) -> str:
    """How docs/api.md writes a signature: annotations as written in the code, defaults as repr."""
    parts, star_done = [], False
    for p in inspect.signature(obj).parameters.values():
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text, star_done = "*" + text, True
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + text
        elif p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if p.annotation is not p.empty else f"={p.default!r}"
        parts.append(text)
    returns = inspect.signature(obj).return_annotation
    tail = f" -> {_annotation(returns)}" if returns is not inspect.Signature.empty else ""
    prefix = "class " if inspect.isclass(obj) else ""
    return f"{prefix}{name}({', '.join(parts)}){tail}"


def test_every_api_doc_entry_imports_and_shows_the_real_signature():
    """docs/api.md is what a notebook user copies: each import must work, each signature be current."""
    text = (REPO / "docs" / "api.md").read_text()
    entries = API_ENTRY.findall(text)
    assert len(entries) > 30
    stale = []
    for module, name, shown in entries:
        obj = getattr(importlib.import_module(module), name)
        if callable(obj) and shown != signature_text(name, obj):
            stale.append(f"{module}.{name}: docs say {shown!r}, code has {signature_text(name, obj)!r}")
    assert not stale, "\n".join(stale)
