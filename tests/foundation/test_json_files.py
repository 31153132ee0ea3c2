"""`read_json_object`: the one reader of run.json, position.json, manifest.json, metrics.json and
reproduce.json; each malformed file is one line naming it, in the caller's error type."""
from __future__ import annotations

import os

import pytest

from muse_rec.json_files import read_json_object, refuse_special_file


class Refused(ValueError):
    pass


@pytest.mark.parametrize("content, words", [
    (b'{"a": 1', "not valid JSON (Expecting ',' delimiter: line 1 column 8 (char 7))"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b"\xff\xfe{}", "not valid JSON ("),
    (b"", "not valid JSON (Expecting value"),
    # json's decoder recurses per bracket: a RecursionError traceback of every command reading such a file
    # (a meta.json, metrics.json, position.json or manifest from elsewhere).
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON (nested too deeply)"),
    (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "not valid JSON (nested too deeply)"),
])
def test_a_malformed_file_is_named_in_the_callers_error(tmp_path, content, words):
    path = tmp_path / "run.json"
    path.write_bytes(content)
    with pytest.raises(Refused) as e:
        read_json_object(path, Refused, advice="; start a new run")
    assert str(e.value).startswith(f"{path}: {words}") and str(e.value).endswith("; start a new run")


def test_a_directory_in_its_place_and_a_good_object(tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(Refused, match=r"d.json: cannot read \(Is a directory\)"):
        read_json_object(tmp_path / "d.json", Refused)
    (tmp_path / "ok.json").write_text('{"run_id": "x", "n": [1]}')
    assert read_json_object(tmp_path / "ok.json") == {"run_id": "x", "n": [1]}


def test_a_special_file_is_refused_under_the_callers_label(tmp_path):
    """A spec's parent is named as its child's `extends:` line names it: `load.py` spelled the refusal out
    itself for that; the one helper takes the label (by default the path)."""
    os.mkfifo(tmp_path / "parent.yaml")
    with pytest.raises(Refused) as e:
        refuse_special_file(tmp_path / "parent.yaml", Refused, "; name a spec file", label="child.yaml: extends: parent.yaml")
    assert str(e.value) == "child.yaml: extends: parent.yaml: a FIFO (named pipe), not a regular file; name a spec file"
    with pytest.raises(Refused) as e:
        refuse_special_file(tmp_path / "parent.yaml", Refused)
    assert str(e.value) == f"{tmp_path / 'parent.yaml'}: a FIFO (named pipe), not a regular file"
