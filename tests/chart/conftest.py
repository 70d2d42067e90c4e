"""Shared fixtures of the chart tests: the repository layout and the argocd-gateway binary,
whose --help is the truth about flags and the environment variables they read."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def binary() -> Path:
    """target/debug/argocd-gateway (the README runs cargo test first); built when missing."""
    path = Path(os.environ.get("ARGOCD_GATEWAY_BIN", ROOT / "target" / "debug" / "argocd-gateway"))
    if not path.exists():
        subprocess.run(["cargo", "build", "--locked", "--bin", "argocd-gateway"], cwd=ROOT, check=True)
    return path


class Cli:
    """The binary's commands, flags and variables, read from its --help."""

    def __init__(self, binary: Path):
        self.binary = binary

    @functools.lru_cache(maxsize=None)
    def help(self, *command: str) -> str:
        out = subprocess.run([str(self.binary), *command, "--help"], capture_output=True, text=True,
                             check=True, env={"PATH": os.environ.get("PATH", "")})
        return out.stdout

    def subcommands(self, *command: str) -> list[str]:
        text = self.help(*command)
        if "\nCommands:\n" not in text:
            return []
        block = text.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]
        names = [m.group(1) for m in re.finditer(r"^  ([a-z][a-z0-9-]*)\s", block, re.M)]
        return [n for n in names if n != "help"]

    def all_commands(self, *command: str) -> list[tuple[str, ...]]:
        out = [command]
        for sub in self.subcommands(*command):
            out.extend(self.all_commands(*command, sub))
        return out

    def flags(self, *command: str) -> set[str]:
        return set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", self.help(*command), re.M))

    def env_vars(self, *command: str) -> set[str]:
        return set(re.findall(r"\[env: ([A-Z0-9_]+)=", self.help(*command)))

    def flag_env(self, *command: str) -> dict[str, str]:
        """Each flag of a command and the variable it reads."""
        out = {}
        blocks = re.split(r"\n(?=\s+(?:-\w, )?--[a-z])", self.help(*command))
        for block in blocks:
            flag = re.match(r"\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", block)
            env = re.search(r"\[env: ([A-Z0-9_]+)=", block)
            if flag and env:
                out[flag.group(1)] = env.group(1)
        return out


@pytest.fixture(scope="session")
def cli(binary) -> Cli:
    return Cli(binary)
