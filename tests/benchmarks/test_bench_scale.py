"""`benchmarks/bench_scale.py --quick`: the scale benchmark runs end to end at a tiny size."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "bench_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_quick_run_measures_three_sizes(tmp_path: Path) -> None:
    bench = _bench()
    assert bench.main(["--quick", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")]) == 0
    doc = json.loads((tmp_path / "o" / "bench_scale.json").read_text())
    res = doc["results"]
    assert [r["size"] for r in res] == ["quick x1", "quick x2", "quick x4"]
    # Sizes double: the generator's users (and so behaviours) grow with the multiplier.
    assert res[0]["users"] * 4 == res[2]["users"] and res[2]["behaviours"] > 3 * res[0]["behaviours"]
    for r in res:
        p = r["prepare"]
        assert p["seconds"] > 0 and p["cpu_seconds"] > 0 and p["rows_per_s"] > 0
        assert 0 < p["peak_rss_anon_mib"] <= p["peak_rss_total_mib"] < 4096
        assert p["output_bytes"] > 0 and r["raw_rows"] > r["users"]
    assert "| quick x4 |" in bench.markdown(res)
