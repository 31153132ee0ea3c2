"""Every command's bad-input error is one line (exit 2): one `cli.errors.report` prints them all, so a message
whose text spans lines (here a path holding a newline) cannot break that. `prepare`, `baselines`, `check`,
`compare`, `launch`, `plan`, `rank`, `reproduce` and `synth` printed ``{e}`` as it was: two lines for such a path."""
from __future__ import annotations

import errno
import os

import pytest

from muse_rec.cli import main as cli_main
from muse_rec.cli.errors import report
from tests.conftest import REPO


@pytest.mark.parametrize("argv", [
    ["prepare", "{p}", "{out}"],
    ["baselines", "{p}"],
    ["check", "{p}"],
    ["compare", "{p}"],
    ["synth", "{f}", "--preset", "tiny"],
])
def test_a_path_with_a_newline_is_a_one_line_error(argv, tmp_path, capsys):
    path = str(tmp_path / "no\nsuch")
    taken = tmp_path / "a\nfile"
    taken.write_text("x")  # an output path that is a file
    args = [a.format(p=path, out=tmp_path / "out", f=taken) for a in argv]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"muse-rec {argv[0]}: "), repr(err)
    assert "such" in err or "file" in err  # names the path (its newline folded into a space, or escaped)


def test_prepare_keeps_saying_bad_input_for_the_raw_data(tmp_path, capsys):
    assert cli_main(["prepare", str(tmp_path / "absent"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"muse-rec prepare: bad input: {tmp_path / 'absent'}: no such directory")


def test_the_words_report_puts_before_the_error_are_one_line_too(capsys):
    """`report`'s ``what`` quotes a flag's value; it was printed as given, so a path with a newline split the line."""
    assert report("compare", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "--out a\nb: cannot write: ") == 2
    assert capsys.readouterr().err == f"muse-rec compare: --out a b: cannot write: [Errno {errno.ENOSPC}] No space left on device\n"


def _no_space(path: str):
    def write(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return write


@pytest.mark.parametrize("command", ["compare", "baselines", "plan", "synth", "rank"])
def test_a_write_or_read_that_fails_under_a_path_with_a_newline_is_one_line(command, tmp_path, monkeypatch, capsys,
                                                                              request):
    """The OSError lines of `compare --out`, `baselines --out`, `plan --json`, `synth` and `rank --request`
    printed the path (and ``{e}``) themselves, not through `report`: two lines for such a path."""
    path = str(tmp_path / "a\nb")
    if command == "compare":
        monkeypatch.setattr("muse_rec.data.files.replace_texts", _no_space(path + ".md"))
        argv = ["compare", str(request.getfixturevalue("trained").run_dir), "--no-floors", "--out", path]
    elif command == "baselines":
        monkeypatch.setattr("muse_rec.metrics.report.save_metrics_json", _no_space(path))
        argv = ["baselines", str(request.getfixturevalue("prepared_tiny")), "--out", path]
    elif command == "plan":
        monkeypatch.setattr("muse_rec.data.files.replace_text", _no_space(path))
        argv = ["plan", "--spec", "specs/taobao_mm_full/muse.yaml", "--world-size", "8", "--json", path]
    elif command == "synth":
        monkeypatch.setattr("muse_rec.data.synth.write_synthetic_release", _no_space(path))
        argv = ["synth", path, "--preset", "tiny", "--quiet"]
    else:  # a request file that is not there: input_file leaves it to the command's own line
        argv = ["rank", "--spec", "specs/demo/din.yaml", "--request", path]
    monkeypatch.chdir(REPO)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"muse-rec {command}: "), repr(err)
    assert "a b" in err and ("cannot write" in err or "cannot read request" in err), err
