"""output_dir must name a directory of the run's own: not the current directory, a parent or /."""
from __future__ import annotations

import pytest

from muse_rec.cli import main
from muse_rec.spec import SpecError, from_dict


@pytest.mark.parametrize("output_dir", ["", ".", "./", "/", "..", "runs/..", "file://", "{name}/.."])
def test_output_dir_without_a_name_of_its_own_is_refused(output_dir):
    with pytest.raises(SpecError, match=r"^bad.yaml: output_dir: .*names no directory of the run's own"):
        from_dict({"output_dir": output_dir}, source="bad.yaml")


@pytest.mark.parametrize("output_dir", ["runs/{name}", "a/.", "./runs", "../runs/{name}", "/tmp/r"])
def test_output_dir_with_a_name_is_taken(output_dir):
    assert from_dict({"output_dir": output_dir}, source="ok.yaml").output_dir == output_dir


def test_train_overwrite_into_the_current_directory_is_one_line(tmp_path, monkeypatch, capsys):
    """`train --overwrite --set output_dir=''` in a folder of other files was a ValueError traceback
    ("PosixPath('.') has an empty name") moving the run aside, leaving its .lock there."""
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "s.yaml").write_text("name: x\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--spec", "s.yaml", "--overwrite", "--set", "output_dir=''"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--set output_dir='': output_dir: '': names no directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "s.yaml"]
