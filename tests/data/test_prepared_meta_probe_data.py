"""`prepare RAW OUT` where OUT holds this release's preparation whose meta.json lost, or holds no number at,
an entry the summary line prints (vocab_mode, a click rate, the unknown-behaviour counts, the unseen test
users) prepares it again, as it does a directory that does not open, instead of a KeyError / TypeError
traceback (exit 1) once the fingerprint matched."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Dict

import pytest

from tests.data.rawgen import prepare_small_release



def _set(key: str, value: object) -> Callable[[Dict], None]:
    def edit(meta: Dict) -> None:
        meta["splits"]["train"][key] = value
    return edit


EDITS = {
    "vocab_mode removed": lambda meta: meta.pop("vocab_mode"),
    "test_users_unseen_in_train removed": lambda meta: meta.pop("test_users_unseen_in_train"),
    "positive_rate null": _set("positive_rate", None),
    "behaviours_unknown_item a string": _set("behaviours_unknown_item", "x"),
    "behaviours_without_item_id above the unknown ones": _set("behaviours_without_item_id", 10**9),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("meta_entries")
    prepare_small_release(root, seed=6)
    return root


@pytest.mark.parametrize("case", sorted(EDITS))
def test_a_meta_json_without_the_summarys_entries_is_prepared_again(prepared: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture, case: str) -> None:
    from muse_rec.cli import main

    out = tmp_path / "out"
    shutil.copytree(prepared / "out", out)
    original = json.loads((out / "meta.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    EDITS[case](meta)
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning):  # rawgen's release warns while it is prepared again
        assert main(["prepare", str(prepared / "raw"), str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"prepared {out}: train ")
    again = json.loads((out / "meta.json").read_text())
    again.pop("config"), original.pop("config")  # the CLI's --batch-rows and --partition-bits: the same arrays
    assert again == original
