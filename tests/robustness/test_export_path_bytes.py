"""An export whose directory name is not UTF-8 (bytes other than text, as a Linux file name may hold) serves.

`export` wrote it, but `rank --exported` refused it: torch's archive reader took the name for a file object
("cannot load the exported program (AttributeError: 'str' object has no attribute 'tell')").
"""
from __future__ import annotations

import json
import os
import shutil

from tests.robustness.conftest import SPEC, cli


def test_rank_serves_an_export_whose_directory_name_is_not_utf8(trained, tmp_path):
    odd = tmp_path / os.fsdecode(b"export-\xff")  # the name's byte 0xff, as the file system holds it
    shutil.copytree(trained.exported, odd)
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2, 3]}))
    scores = []
    for exported in (trained.exported, odd):
        out = cli("rank", "--spec", SPEC, *trained.sets(), "--exported", str(exported), "--request", str(req))
        assert out.returncode == 0, out.stderr[-2000:]
        scores.append(json.loads(out.stdout)["scores"])
    assert scores[0] == scores[1]
