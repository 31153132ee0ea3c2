"""Fixtures shared by the metrics tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.synth import write_synthetic_release
from muse_rec.data.synth_config import SynthConfig


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A prepared `tiny` synthetic release (histories up to 200 long; ~100 GAUC users on test), per module."""
    root = tmp_path_factory.mktemp("tiny")
    write_synthetic_release(str(root / "raw"), SynthConfig.preset("tiny"), progress=False, diagnostics=False)
    prepare(str(root / "raw"), str(root / "prepared"), PrepareConfig(progress=False))
    return root / "prepared"
