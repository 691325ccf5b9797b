"""Every command in a ```bash block of README.md and docs/*.md at least parses.

Convention: a fenced block whose info string is exactly ``bash`` holds commands a reader
can run, one per line (a trailing ``\\`` continues a line, ``#`` starts a comment). Each is
checked here so the docs cannot rot: ``fastlstm ...`` (also via ``python -m fastlstm`` or
``torchrun ... -m fastlstm``) must be accepted by the real argument parser; scripts and
paths handed to ``bash``, ``python`` and ``pytest`` must exist in the repository. Output,
transcripts and anything not meant to be run go in ```text (or ```console) blocks, which
are not checked.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from fastlstm.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Programs whose commands are only checked to split into words: installers and shell
# built-ins whose effect cannot be checked offline.
PLAIN_PROGRAMS = {
    "cat", "cd", "cp", "curl", "echo", "export", "git", "head", "ls", "mkdir", "nvidia-smi",
    "open", "pip", "pip3", "source", "tail", "tar", "wget", "xdg-open",
}  # fmt: skip
SEPARATORS = {"&&", "||", ";", "|"}


def _commands(block: str) -> list[str]:
    """The block's command lines, continuations joined, comments and blanks dropped."""
    text = re.sub(r"\\\n", " ", block)
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _split(command: str) -> list[list[str]]:
    """Words of each simple command in a line (split at ``&&``, ``||``, ``;`` and ``|``)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    parts: list[list[str]] = [[]]
    for word in lexer:
        if word in SEPARATORS:
            parts.append([])
        else:
            parts[-1].append(word)
    words = [p for p in parts if p]
    for p in words:
        while p and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", p[0]):
            p.pop(0)  # leading VAR=value assignments
    return [p for p in words if p]


def _check_fastlstm(argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                pytest.fail(f"`fastlstm {shlex.join(argv)}` does not parse: {err.getvalue()}")


def _check_path(word: str, what: str) -> None:
    path = ROOT / word.split("::")[0]
    assert path.exists(), f"{what} {word!r} does not exist in the repository"


def check_command(words: list[str]) -> None:
    """Check one simple command (a list of words); fails the test with the reason."""
    prog, args = words[0], words[1:]
    if prog == "fastlstm":
        _check_fastlstm(args)
    elif prog in ("python", "python3") and args[:2] == ["-m", "fastlstm"]:
        _check_fastlstm(args[2:])
    elif prog == "torchrun":
        assert "-m" in args and args[args.index("-m") + 1] == "fastlstm", (
            f"torchrun command {shlex.join(words)!r} must launch -m fastlstm"
        )
        _check_fastlstm(args[args.index("-m") + 2 :])
    elif prog == "pytest" or (prog in ("python", "python3") and args[:2] == ["-m", "pytest"]):
        targets = args[2:] if prog != "pytest" else args
        for word in targets:
            if not word.startswith("-") and ("/" in word or word.endswith(".py")):
                _check_path(word, "pytest path")
    elif prog in ("bash", "sh") or prog.startswith("./"):
        _check_path(args[0] if prog in ("bash", "sh") else prog, "script")
    elif prog in ("python", "python3"):
        script = next((a for a in args if not a.startswith("-")), None)
        assert script is not None, f"python command {shlex.join(words)!r} names no script"
        _check_path(script, "python script")
        compile((ROOT / script).read_text(), script, "exec")
    else:
        assert prog in PLAIN_PROGRAMS, (
            f"unknown program {prog!r} in a ```bash block; teach tests/bench/"
            "test_docs_commands.py to check it, or put the line in a ```text block"
        )


COMMANDS = [
    pytest.param(line, id=f"{path.name}-{k}-{i}")
    for path in DOCS
    for k, block in enumerate(re.findall(r"```bash\n(.*?)```", path.read_text(), re.S))
    for i, line in enumerate(_commands(block))
]


@pytest.mark.parametrize("line", COMMANDS)
def test_doc_command_parses(line: str):
    for words in _split(line):
        check_command(words)


@pytest.mark.parametrize(
    "line, problem",
    [
        pytest.param("fastlstm bench --no-such-option", "does not parse", id="bad-option"),
        pytest.param("bash scripts/missing.sh", "does not exist", id="missing-script"),
        pytest.param("frobnicate --all", "unknown program", id="unknown-program"),
        pytest.param("pytest tests/nowhere/ -q", "does not exist", id="missing-test-path"),
    ],
)
def test_the_check_catches_rot(line: str, problem: str):
    with pytest.raises((AssertionError, pytest.fail.Exception), match=problem):
        for words in _split(line):
            check_command(words)


def test_splitting_handles_chains_comments_and_env():
    assert _split("A=1 fastlstm bench --full && pytest benchmarks/  # why") == [
        ["fastlstm", "bench", "--full"],
        ["pytest", "benchmarks/"],
    ]
    assert _commands("a \\\n  b\n# c\n\nd\n") == ["a    b", "d"]
