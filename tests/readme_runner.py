"""README.md's command blocks, parsed and run command by command in one shell whose output is a terminal (a pty),
as a user following the README would type them: tests/test_readme.py runs the walkthrough against `credvault dev`.

The shell keeps its variables from one command and one block to the next (the README's blocks rely on the
``export`` of an earlier one), its output is recorded as a transcript (``$ command`` lines, then what the command
printed), and each command's exit status is read from a marker the runner prints after it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import pty
import re
import select
import subprocess
import time
from collections.abc import Callable, Sequence

__all__ = ["Block", "Ran", "Terminal", "commands_of", "readme_blocks"]

_FENCE = re.compile(r"^```(\S*)\s*$")
_HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?\s*$")
_MARKER = re.compile(r"(?:\r?\n)?\x1erc=(\d+)\x1e\r?\n")


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced block of README.md: the ``## `` section it is in, its language, its text and its first line's
    line number (1-based)."""

    section: str
    lang: str
    text: str
    line: int

    @property
    def key(self) -> tuple[str, str]:
        """(section, first line): what the tests classify a block by. A changed first line is a new block."""
        return self.section, self.text.splitlines()[0].strip() if self.text.strip() else ""


def readme_blocks(readme: pathlib.Path) -> list[Block]:
    """Every fenced block, in order. An unclosed fence is an error (the README no longer parses)."""
    blocks: list[Block] = []
    section = ""
    lang: str | None = None
    start = 0
    body: list[str] = []
    for number, line in enumerate(readme.read_text().splitlines(), start=1):
        fence = _FENCE.match(line)
        if lang is None:
            if line.startswith("## "):
                section = line[3:].strip()
            elif fence:
                lang, start, body = fence.group(1), number + 1, []
        elif line.strip() == "```":
            blocks.append(Block(section, lang, "\n".join(body) + "\n", start))
            lang = None
        else:
            body.append(line)
    if lang is not None:
        raise ValueError(f"README.md:{start - 1}: a ```{lang} block is never closed")
    return blocks


def _complete(text: str) -> bool:
    """Whether bash parses ``text`` as complete commands (no open quote, ``$(`` or ``if``)."""
    return subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True, check=False).returncode == 0


def commands_of(block: Block) -> list[str]:
    """The commands a user types from a ``sh`` block (lines joined at a trailing backslash, within an open quote or
    substitution, and through a here-document ending the line), or the ``$ `` lines of a ``console`` block;
    comment-only and blank lines left out."""
    lines = block.text.splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    commands: list[str] = []
    pending = ""
    heredoc: str | None = None  # the word that ends an open here-document
    for line in lines:
        pending = f"{pending}\n{line}" if pending else line
        if heredoc is not None:
            if line != heredoc:
                continue
            heredoc = None
        elif (opened := _HEREDOC.search(line)) is not None:
            heredoc = opened.group(1)
            continue
        if pending.endswith("\\") or not _complete(pending):
            continue
        if pending.strip() and not pending.lstrip().startswith("#"):
            commands.append(pending)
        pending = ""
    if pending:
        raise ValueError(f"README.md:{block.line}: the block ends inside a command: {pending!r}")
    return commands


@dataclasses.dataclass(frozen=True)
class Ran:
    command: str
    rc: int
    output: str


class Terminal:
    """bash reading commands from a pipe, its output (stdout and stderr) a pty, as in a terminal window."""

    def __init__(self, cwd: pathlib.Path, env: dict[str, str], transcript: pathlib.Path) -> None:
        self.transcript = transcript
        self._master, slave = pty.openpty()
        self._proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.text = ""  # the transcript so far

    def run(self, command: str, timeout: float = 120.0) -> Ran:
        """Types ``command``; returns its exit status and what it printed (``\\r\\n`` as ``\\n``)."""
        self._record("$ " + command.replace("\n", "\n> ") + "\n")
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{command}\nprintf '\\n\\036rc=%d\\036\\n' $?\n".encode())
        self._proc.stdin.flush()
        buffer = b""
        deadline = time.monotonic() + timeout
        while (found := _MARKER.search(buffer.decode(errors="replace"))) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self._record(buffer.decode(errors="replace").replace("\r\n", "\n"))
                raise TimeoutError(f"no end of {command!r} within {timeout} s (transcript: {self.transcript})")
            if select.select([self._master], [], [], left)[0]:
                try:
                    buffer += os.read(self._master, 65536)
                except OSError:  # EIO: the shell is gone
                    raise RuntimeError(f"the shell ended during {command!r} (transcript: {self.transcript})") from None
        text = buffer.decode(errors="replace")
        output = text[: found.start()].replace("\r\n", "\n")
        if output and not output.endswith("\n"):
            output += "\n"  # the marker's own newline ends a last line printed without one (curl)
        self._record(output)
        return Ran(command, int(found.group(1)), output)

    def run_all(self, commands: Sequence[str], substitute: Callable[[str], str]) -> list[Ran]:
        """Each command after ``substitute`` (called just before it runs: it may use what ran before)."""
        return [self.run(substitute(c)) for c in commands]

    def _record(self, text: str) -> None:
        self.text += text
        with self.transcript.open("a") as out:
            out.write(text)

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._master)
