"""`muse-rec compare` reads each run's spec.yaml and run.json once: the settings it groups a run by and the
data it computes the run's floors for came from two reads of spec.yaml, the data fingerprint and ranks of
an older run from two reads of run.json, so a file replaced in between (a run started again in that
directory) mixed two runs' records in what compare said of one."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from muse_rec.cli import main as cli_main
from muse_rec.spec import load_spec

SPEC = Path(__file__).resolve().parents[2] / "specs/methods/muse.yaml"


def test_a_spec_yaml_replaced_during_compare_is_not_read_again(tmp_path: Path, monkeypatch, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    spec = load_spec(SPEC, [f"data.prepared={tmp_path / 'first_data'}"]).to_dict()
    (run / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (run / "metrics.json").write_text(json.dumps({"method": "MUSE", "gauc": 0.6, "auc": 0.6, "logloss": 0.4}))
    later = yaml.safe_dump({**spec, "data": {**spec["data"], "prepared": str(tmp_path / "second_data")}})
    read_text = Path.read_text
    reads = []

    def read_then_replace(self: Path, *args, **kwargs) -> str:
        text = read_text(self, *args, **kwargs)
        if self.name == "spec.yaml":  # another run is started in the directory once compare has read it
            reads.append(self)
            self.write_text(later)
        return text

    monkeypatch.setattr(Path, "read_text", read_then_replace)
    assert cli_main(["compare", str(run)]) == 0
    err = capsys.readouterr().err
    assert len(reads) == 1, reads
    # The floors are of the data the run was grouped by (which does not exist here), not of the new spec's.
    assert "first_data" in err and "second_data" not in err, err


def test_a_run_json_replaced_during_compare_is_not_read_again(tmp_path: Path, monkeypatch, capsys) -> None:
    """A run from before metrics.json recorded its data fingerprint: compare takes it from run.json, and
    the ranks it trained on from run.json again."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text(yaml.safe_dump(load_spec(SPEC).to_dict(), sort_keys=False))
    (run / "metrics.json").write_text(json.dumps({"method": "MUSE", "gauc": 0.6, "auc": 0.6, "logloss": 0.4}))
    (run / "run.json").write_text(json.dumps({"data_fingerprint": "aaaa", "world_size": 1}))
    read_text = Path.read_text
    reads = []

    def read_then_replace(self: Path, *args, **kwargs) -> str:
        text = read_text(self, *args, **kwargs)
        if self.name == "run.json":  # the run is started again on 2 ranks once compare has read it
            reads.append(self)
            self.write_text(json.dumps({"data_fingerprint": "bbbb", "world_size": 2}))
        return text

    monkeypatch.setattr(Path, "read_text", read_then_replace)
    assert cli_main(["compare", str(run), "--no-floors"]) == 0
    assert len(reads) == 1, reads
