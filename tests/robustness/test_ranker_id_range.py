"""The Ranker's Python API takes int64 ids only, as the request parser does.

Before, a user id beyond int64 was an OverflowError from inside the history load, and unsigned candidate
ids beyond it (numpy makes ``[2**63]`` uint64) were cast to negative ids and scored as another id.
"""
from __future__ import annotations

import numpy as np
import pytest

from muse_rec.json_files import INT64_MAX
from muse_rec.serving.ranker import Ranker
from muse_rec.serving.request import RequestError
from muse_rec.spec import load_spec
from tests.conftest import REPO
from tests.robustness.conftest import FAST, SPEC


@pytest.fixture(scope="module")
def ranker(trained):
    spec = load_spec(REPO / SPEC, [f"data.prepared={trained.prepared}", f"output_dir={trained.runs}/{{name}}", *FAST])
    with Ranker.from_checkpoint(spec) as r:
        yield r


@pytest.mark.parametrize("user", [INT64_MAX + 1, 2 ** 70, np.uint64(2 ** 64 - 1), -(2 ** 63) - 1])
def test_a_user_id_beyond_int64_is_a_request_error(ranker, user):
    with pytest.raises(RequestError, match=r"^user: expected an int64 user id"):
        ranker.score(user, [1])


@pytest.mark.parametrize("candidates,bad", [([2 ** 63, 2 ** 64 - 1], (0, 2 ** 63)),  # a list numpy makes uint64
                                            (np.array([1, 2 ** 64 - 1], np.uint64), (1, 2 ** 64 - 1))])
def test_unsigned_candidate_ids_beyond_int64_are_a_request_error(ranker, candidates, bad):
    assert np.asarray(candidates).dtype == np.uint64
    with pytest.raises(RequestError, match=rf"^candidates\[{bad[0]}\]: expected an int64 item id, got {bad[1]}$"):
        ranker.score(1, candidates)


def test_unsigned_ids_within_int64_score_as_their_int64_values(ranker):
    ids = [1, 2, 3]
    assert np.array_equal(ranker.score(7, np.array(ids, np.uint64)), ranker.score(7, ids))
