"""`muse-rec --help` lists every command with its module's HELP, read without importing the module."""
from __future__ import annotations

import importlib

import pytest

from muse_rec import cli


@pytest.mark.parametrize("name", cli.COMMANDS)
def test_help_line_is_the_modules_help(name: str) -> None:
    # baselines' HELP spans two source lines: the listing must show the string, not its first line's source
    assert cli._help_line(name) == importlib.import_module(f"muse_rec.cli.{name}").HELP


def test_prepare_s_vocab_help_says_what_full_leaves_out() -> None:
    # `--vocab full` holds the SCL items, every target, item_features' items and the train histories' items
    # (docs/data.md "Vocabularies"); an item seen only in a test history is not in it (prepare's last line
    # counts such behaviours as "outside the vocabulary"). The help said "every id seen".
    import argparse

    from muse_rec.cli import prepare

    p = argparse.ArgumentParser()
    prepare.add_arguments(p)
    text = next(a.help for a in p._actions if "--vocab" in a.option_strings)
    assert "every id seen" not in text
    assert "test histor" in text


@pytest.mark.parametrize("name", ["prepare", "reproduce", "baselines"])
def test_path_helps_promise_only_what_the_cli_reads(name: str) -> None:
    # The CLI registers no iopath handler but file://: `reproduce --prepared s3://...` (docs/reproduce.md's own
    # example) was "no meta.json - no such directory", exit 2, where the help said "any iopath path".
    import argparse

    p = argparse.ArgumentParser()
    importlib.import_module(f"muse_rec.cli.{name}").add_arguments(p)
    helps = " ".join(a.help or "" for a in p._actions)
    assert "any iopath path" not in helps
    assert "file://" in helps
