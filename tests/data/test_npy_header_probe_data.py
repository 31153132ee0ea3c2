"""A prepared array whose .npy header was damaged into text NumPy's parser does not turn into a ValueError
(a bracket left open, a descr that is no literal, a bytes key) is refused in one line naming the file
(PreparedDataError, `muse-rec check` exit 2), not a TokenError / SyntaxError / TypeError traceback."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from muse_rec.data.prepared import PreparedData, PreparedDataError
from tests.data.rawgen import prepare_small_release

REL = "test/sample_user_keys.npy"  # int64 [N]: header "{'descr': '<i8', 'fortran_order': False, 'shape': (N,)}"
# Each edit keeps the header's length, so the data offset and the file's size stay right.
EDITS = [(b"{'descr'", b"{['descr"),  # tokenize.TokenError: EOF in multi-line statement
         (b"'<i8'", b"',i8'"),  # SyntaxError from the descr's own parse
         (b", 'shape'", b",b'shape'")]  # TypeError: NumPy sorts the keys, bytes beside str


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_small_release(tmp_path_factory.mktemp("npy_header"), seed=2)


@pytest.mark.parametrize("old, new", EDITS)
def test_a_damaged_header_is_named_in_one_line(prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                old: bytes, new: bytes) -> None:
    from muse_rec.cli import main

    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    path = out / REL
    data = path.read_bytes()
    assert old in data[:128] and len(new) == len(old)
    path.write_bytes(data.replace(old, new, 1))
    with pytest.raises(PreparedDataError, match=rf"{REL}: not a readable \.npy file"):
        PreparedData(str(out))
    assert main(["check", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{REL}: not a readable .npy file" in err and "Traceback" not in err, err
