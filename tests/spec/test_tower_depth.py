"""model.tower_hidden's depth is bounded: 100,000 layers hung in torch's DDP set-up (no output, SIGTERM ignored)."""
from __future__ import annotations

import pytest

from muse_rec.spec import SpecError, from_dict
from muse_rec.spec.schema import MAX_TOWER_LAYERS


def test_a_tower_deeper_than_the_bound_is_refused_naming_the_key() -> None:
    with pytest.raises(SpecError, match=rf"model.tower_hidden: {MAX_TOWER_LAYERS + 1:,} layers: at most"):
        from_dict({"model": {"tower_hidden": [4] * (MAX_TOWER_LAYERS + 1)}}, source="deep.yaml")


def test_a_tower_at_the_bound_is_taken() -> None:
    spec = from_dict({"model": {"tower_hidden": [4] * MAX_TOWER_LAYERS}}, source="ok.yaml")
    assert len(spec.model.tower_hidden) == MAX_TOWER_LAYERS
