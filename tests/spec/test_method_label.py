"""model.method is the label compare and reproduce read back from a run's metrics.json."""
from __future__ import annotations

import json

import pytest

from muse_rec.metrics.report import read_run_metrics
from muse_rec.spec import SpecError, from_dict, load_spec


def test_empty_method_is_refused_at_load(tmp_path):
    """model.method: '' trained to the end (exit 0); compare then refused the run's metrics.json
    ("method: expected the method's name, got ''")."""
    (tmp_path / "s.yaml").write_text("name: x\nmodel: {method: muse}\n")
    with pytest.raises(SpecError, match=r"^--set model.method='': model.method: empty: name the method"):
        load_spec(tmp_path / "s.yaml", ["model.method=''"])


@pytest.mark.parametrize("method", ["muse", "x", " "])
def test_a_method_the_spec_takes_is_one_compare_reads(tmp_path, method):
    spec = from_dict({"model": {"method": method}}, source="ok.yaml")
    (tmp_path / "metrics.json").write_text(json.dumps({"method": spec.model.method}))
    assert read_run_metrics(tmp_path / "metrics.json")["method"] == method
