"""An evaluation whose scores turn NaN/Inf stops with one error, after every rank ran every forward.

Each forward of a sharded model is a collective (the embedding exchange): a rank that left the
loop at its first NaN batch would leave the other ranks waiting in their next batch's exchange
until the collective timeout. So the loop runs on, unscored, and the ranks agree after it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from muse_rec.data.prepare import PrepareConfig, prepare
from muse_rec.data.prepared import PreparedData
from muse_rec.distributed.env import DistEnv
from muse_rec.training.evaluate import predict
from muse_rec.training.run_record import RunError
from tests.data.rawgen import write_raw_release

BATCH = 16


class _NaNFrom(torch.nn.Module):
    """Logit 0 for every sample, NaN from forward call ``first_nan`` (1-based) on; counts its calls."""

    def __init__(self, first_nan: int) -> None:
        super().__init__()
        self.first_nan, self.calls = first_nan, 0

    def forward(self, batch):
        self.calls += 1
        logits = torch.zeros_like(batch.labels)
        if self.calls >= self.first_nan:
            logits = logits + float("nan")
        return None, (None, logits, batch.labels)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_nonfinite")
    write_raw_release(str(root / "raw"), n_train_users=40, n_test_users=30, n_items=50, max_len=6, seed=3)
    prepare(str(root / "raw"), str(root / "prepared"), PrepareConfig(progress=False))
    return root / "prepared"


def test_every_forward_runs_and_the_error_names_the_first_nan_batch(prepared: Path) -> None:
    data = PreparedData(str(prepared))
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend="gloo")
    batches = -(-data.num_samples("test") // BATCH)
    assert batches >= 4, batches  # the premise: batches after the NaN one
    model = _NaNFrom(first_nan=2)
    with pytest.raises(RunError, match="scored NaN/Inf on test batch 2 of rank 0"):
        predict(model, data, "test", BATCH, 6, env, progress=False)
    assert model.calls == batches  # not 2: the ranks' forwards stay in step
