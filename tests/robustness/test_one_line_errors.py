"""Every command's bad-input error is one line (exit 2): one `cli.errors.report` prints them all, so a message
whose text spans lines (here a path holding a newline) cannot break that. `prepare`, `baselines`, `check`,
`compare`, `launch`, `plan`, `rank`, `reproduce` and `synth` printed ``{e}`` as it was: two lines for such a path."""
from __future__ import annotations

import pytest

from muse_rec.cli import main as cli_main


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
