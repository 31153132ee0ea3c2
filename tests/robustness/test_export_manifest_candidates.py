"""An export whose manifest.json allows more candidates than its program takes is one line, not a traceback.

The Ranker builds its calls from manifest.json; a ``max_candidates`` edited above the traced range (the
manifest re-sealed) passed the load's one-candidate try, and the program's guard (``cand_items.size()[0]
<= N``) reached the user as an AssertionError traceback at the first request of more candidates.
"""
from __future__ import annotations

import json
import shutil

import pytest

from muse_rec.data.prepared import PreparedData
from muse_rec.integrity import write_manifest
from muse_rec.serving.export_layout import ExportError
from muse_rec.serving.ranker import ExportedScorer, Ranker


def test_a_manifest_allowing_more_candidates_than_the_program_is_named(trained, tmp_path):
    dest = tmp_path / "exported"
    shutil.copytree(trained.exported, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    traced = manifest["max_candidates"]
    manifest["max_candidates"] = 2 * traced
    (dest / "manifest.json").write_text(json.dumps(manifest))
    write_manifest(dest)
    scorer = ExportedScorer(str(dest))
    with Ranker(scorer, PreparedData(str(trained.prepared)), seq_len=scorer.fixed_len, max_batch=2 * traced) as ranker:
        assert len(ranker.score(1, list(range(1, traced + 1)))) == traced  # within the program's range: served
        with pytest.raises(ExportError, match=rf"^{dest}: the exported program refuses the inputs its manifest\.json "
                                              rf"describes \(AssertionError: .*{traced}.*; re-export$"):
            ranker.score(1, list(range(1, traced + 2)))
