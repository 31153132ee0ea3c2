"""`PredictionAccumulator` in one process, and the Parquet predictions round trip."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from tests.conftest import error_of_call_unblocking_fifos
from tests.metrics.metrics_reference import random_predictions

from muse_rec.metrics import PredictionAccumulator, compute_metrics, read_predictions
from muse_rec.metrics.predictions_io import part_name, write_part

COLS = ("user_keys", "item_keys", "labels", "scores", "weights", "seq_lengths", "item_popularity")


def _feed(acc: PredictionAccumulator, d, start: int, stop: int, batch: int, device: str = "cpu") -> None:
    for lo in range(start, stop, batch):
        hi = min(lo + batch, stop)
        acc.update(*(torch.from_numpy(np.ascontiguousarray(d[c][lo:hi])).to(device) for c in COLS))


def _reference(d):
    return compute_metrics(
        d["user_keys"],
        d["labels"],
        d["scores"],
        weights=d["weights"],
        seq_lengths=d["seq_lengths"],
        item_popularity=d["item_popularity"],
    )


def test_batches_equal_one_shot_compute():
    d = random_predictions(0)
    acc = PredictionAccumulator()
    # Batches of 37 cut through users (data are shuffled, so every user spans batches).
    _feed(acc, d, 0, d["scores"].size, 37)
    assert len(acc) == int(d["weights"].sum())
    got = acc.compute()
    assert got.pop("world_size") == 1
    assert repr(got) == repr(_reference(d))


def test_bfloat16_tensors_are_read_as_their_exact_values():
    """A bf16 model's probabilities and a bf16 batch's labels and weights (docs/metrics.md's
    ``acc.update(..., torch.sigmoid(logits), batch.weights)``): NumPy has no bfloat16, and `update` raised
    TypeError "Got unsupported ScalarType BFloat16". The scores are the bf16 values exactly (fp32 holds
    them), so the metrics equal those of the same values given in float32, ties and all."""
    d = random_predictions(5)
    tensors = {c: torch.from_numpy(d[c]) for c in COLS}
    for c in ("labels", "scores", "weights"):
        tensors[c] = tensors[c].to(torch.bfloat16)
    acc = PredictionAccumulator()
    acc.update(*(tensors[c] for c in COLS))
    rounded = dict(d, scores=tensors["scores"].float().numpy())  # the bf16 values, exactly
    got = acc.compute()
    got.pop("world_size")
    assert repr(got) == repr(_reference(rounded))


def test_padding_rows_are_dropped_whatever_they_hold():
    d = random_predictions(1)
    acc = PredictionAccumulator()
    _feed(acc, d, 0, d["scores"].size, 64)
    base = acc.compute()
    pad = {c: d[c].copy() for c in COLS}
    pad["weights"][:] = 0.0
    pad["labels"][:] = 1.0  # would change every metric if counted
    _feed(acc, pad, 0, 50, 50)
    assert repr(acc.compute()) == repr(base)


def test_optional_columns_must_be_consistent():
    acc = PredictionAccumulator()
    one = torch.ones(2)
    acc.update(torch.tensor([1, 2]), torch.tensor([5, 6]), torch.tensor([0.0, 1.0]), torch.tensor([0.3, 0.4]), one)
    assert "by_seq_length" not in acc.compute()
    with pytest.raises(ValueError, match="optional columns"):
        acc.update(
            torch.tensor([1]), torch.tensor([5]), torch.tensor([0.0]), torch.tensor([0.3]), torch.ones(1),
            seq_lengths=torch.tensor([3]),
        )


def test_update_rejects_bad_batches():
    acc = PredictionAccumulator()
    u, i, w = torch.tensor([1, 2]), torch.tensor([5, 6]), torch.ones(2)
    with pytest.raises(ValueError, match="scores must be probabilities"):
        acc.update(u, i, torch.tensor([0.0, 1.0]), torch.tensor([-2.0, 3.0]), w)
    with pytest.raises(ValueError, match="labels has shape|label has shape"):
        acc.update(u, i, torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.1, 0.2]), w)
    with pytest.raises(TypeError, match="user_key must be a torch.Tensor"):
        acc.update([1, 2], i, torch.tensor([0.0, 1.0]), torch.tensor([0.1, 0.2]), w)
    assert len(acc) == 0


def test_reset_forgets_samples():
    d = random_predictions(2)
    acc = PredictionAccumulator()
    _feed(acc, d, 0, 100, 50)
    acc.reset()
    assert len(acc) == 0 and acc.compute()["samples"] == 0


def test_parquet_round_trip(tmp_path):
    d = random_predictions(3)
    acc = PredictionAccumulator()
    _feed(acc, d, 0, d["scores"].size, 100)
    out = acc.write_parquet(tmp_path / "preds")
    assert out.name == part_name(0, 1)
    assert not [p for p in (tmp_path / "preds").iterdir() if p.name.startswith(".")]  # no temp left
    df = read_predictions(tmp_path / "preds")
    keep = d["weights"] == 1
    assert list(df.columns) == ["user_key", "item_key", "label", "score", "seq_length", "item_popularity"]
    np.testing.assert_array_equal(df["user_key"].to_numpy(), d["user_keys"][keep])
    np.testing.assert_array_equal(df["item_key"].to_numpy(), d["item_keys"][keep])
    np.testing.assert_array_equal(df["label"].to_numpy(), d["labels"][keep])
    np.testing.assert_array_equal(df["score"].to_numpy(), d["scores"][keep].astype(np.float64))
    np.testing.assert_array_equal(df["seq_length"].to_numpy(), d["seq_lengths"][keep])
    # pandas reads the directory as one dataset too.
    assert len(pd.read_parquet(tmp_path / "preds")) == int(keep.sum())
    # Metrics recomputed from the file equal the accumulator's.
    again = compute_metrics(df["user_key"], df["label"], df["score"], seq_lengths=df["seq_length"],
                            item_popularity=df["item_popularity"])
    assert repr(again) == repr({k: v for k, v in acc.compute().items() if k != "world_size"})


def test_stale_parts_and_incomplete_datasets(tmp_path):
    cols = {"user_key": np.array([1]), "item_key": np.array([2]), "label": np.array([1], np.int8),
            "score": np.array([0.5])}
    directory = tmp_path / "preds"
    write_part(directory, cols, rank=1, world=2)
    with pytest.raises(ValueError, match="expected parts of ranks 0..1"):
        read_predictions(directory)
    write_part(directory, cols, rank=0, world=3)
    with pytest.raises(ValueError, match="mixes parts"):
        read_predictions(directory)
    # A single-process write removes the parts of earlier runs with other world sizes.
    acc = PredictionAccumulator()
    acc.update(torch.tensor([7]), torch.tensor([8]), torch.tensor([1.0]), torch.tensor([0.9]), torch.ones(1))
    acc.write_parquet(directory)
    assert sorted(p.name for p in directory.iterdir()) == [part_name(0, 1)]
    assert read_predictions(directory)["user_key"].tolist() == [7]
    with pytest.raises(ValueError, match="missing"):
        write_part(directory, {"user_key": np.array([1])}, 0, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_are_copied_to_cpu():
    d = random_predictions(4)
    acc = PredictionAccumulator()
    _feed(acc, d, 0, d["scores"].size, 128, device="cuda")
    got = acc.compute()
    got.pop("world_size")
    assert repr(got) == repr(_reference(d))


def test_predictions_under_a_name_that_is_not_utf8_are_written_and_read(tmp_path):
    """`evaluate --out /data/caf\xe9` scored the split, then pyarrow failed to encode the path as UTF-8
    (UnicodeEncodeError traceback, no predictions); the part is written and read by its OS bytes now."""
    directory = tmp_path / os.fsdecode(b"caf\xe9")
    cols = {"user_key": np.arange(3), "item_key": np.arange(3), "label": np.array([0, 1, 0]),
            "score": np.array([0.1, 0.9, 0.2], np.float32)}
    write_part(directory, cols, rank=0, world=1)
    assert read_predictions(directory)["label"].tolist() == [0, 1, 0]


@pytest.mark.parametrize("fifo_is", ["a part", "the path"])
def test_predictions_that_are_a_fifo_are_refused_without_reading_them(tmp_path, fifo_is: str):
    """`read_predictions` of a run whose part file was a FIFO blocked forever opening it; a FIFO given as the
    path itself was "no predictions at" it. One line naming the file now."""
    directory = tmp_path / "preds"
    cols = {"user_key": np.arange(2), "item_key": np.arange(2), "label": np.array([0, 1]), "score": np.array([0.1, 0.9])}
    write_part(directory, cols, rank=0, world=2)
    fifo = directory / part_name(1, 2) if fifo_is == "a part" else tmp_path / "preds.parquet"
    os.mkfifo(fifo)
    path = directory if fifo_is == "a part" else fifo
    error = error_of_call_unblocking_fifos(lambda: read_predictions(path), tmp_path, ValueError)
    assert error == f"{fifo}: a FIFO (named pipe), not a regular file"
