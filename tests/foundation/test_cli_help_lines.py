"""`muse-rec --help` lists every command with its module's HELP, read without importing the module."""
from __future__ import annotations

import importlib

import pytest

from muse_rec import cli


@pytest.mark.parametrize("name", cli.COMMANDS)
def test_help_line_is_the_modules_help(name: str) -> None:
    # baselines' HELP spans two source lines: the listing must show the string, not its first line's source
    assert cli._help_line(name) == importlib.import_module(f"muse_rec.cli.{name}").HELP
