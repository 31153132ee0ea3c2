"""Reference predictions of the training forward and the matching one-user inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch

from muse_rec.data.loader import make_loader


@dataclass
class SplitPredictions:
    """The training model's view of a split: per-sample arrays and per-user one-user inputs."""

    user_keys: np.ndarray  # [N] raw user id
    item_keys: np.ndarray  # [N] raw item id
    labels: np.ndarray  # [N]
    probs: np.ndarray  # [N] sigmoid of LifelongCTRModel.forward (eval)
    groups: List[Tuple[np.ndarray, Tuple[torch.Tensor, ...]]]  # (sample positions, InferenceModel args)


@torch.no_grad()
def training_predictions(model, data, split: str, seq_len: int, batch_size: int = 256,
                         max_batches: int = 0) -> SplitPredictions:
    """Run the training forward on loader batches; group each batch's samples by user."""
    model.eval()
    uk, ik, lab, pr, groups = [], [], [], [], []
    offset = 0
    for j, batch in enumerate(make_loader(data, split, batch_size, seq_len)):
        if max_batches and j >= max_batches:
            break
        real = batch.weights > 0
        p = torch.sigmoid(model(batch))
        ids = batch.pooled.values().view(-1, batch.batch_size).t()  # [B, 8]
        n = int(real.sum())
        uk.append(batch.user_keys[:n].numpy()); ik.append(batch.item_keys[:n].numpy())
        lab.append(batch.labels[:n].numpy()); pr.append(p[:n].numpy())
        for u in torch.unique(batch.user_keys[:n]):
            rows = (batch.user_keys[:n] == u).nonzero().squeeze(1)
            b = int(rows[0])
            args = tuple(t.clone() for t in (batch.seq_items[b:b + 1], batch.seq_cats[b:b + 1],
                                              batch.seq_lengths[b:b + 1], ids[b:b + 1, :6], batch.target_item[rows],
                                              batch.target_cat[rows], ids[rows, 6:8]))
            groups.append((rows.numpy() + offset, args))
        offset += n
    return SplitPredictions(np.concatenate(uk), np.concatenate(ik), np.concatenate(lab), np.concatenate(pr), groups)


def fp16_and_int8_scl_twins(spec_file: str, rows: int, seq_len: int) -> Tuple[torch.nn.Module, torch.nn.Module,
                                                                               np.ndarray, np.random.Generator]:
    """``(fp16, int8, scl, rng)``: two eval `LifelongCTRModel`s of ``spec_file`` (relative to the repository) with
    the same weights, ``rows`` rows per table; ``fp16`` holds the SCL rows ``scl [rows, dim]`` (every int8 value,
    row 0 zero) in its frozen fp16 table, ``int8`` the same values in an exact int8 table
    (`exact_float_lookups_`, its fp16 table never allocated). ``rng`` draws the callers' requests after."""
    from muse_rec.models.ctr_model import build_train_model
    from muse_rec.models.sparse_arch import REQUIRED_TABLES
    from muse_rec.serving.quantize import exact_float_lookups_
    from muse_rec.spec import load_spec
    from tests.conftest import REPO

    spec = load_spec(REPO / spec_file).model
    sizes = {t: rows for t in REQUIRED_TABLES}
    fp16 = build_train_model(spec, sizes, seq_len, device=torch.device("cpu")).model.eval()
    int8 = build_train_model(spec, sizes, seq_len, device=torch.device("cpu"),
                             scl_device=torch.device("meta")).model.eval()
    assert fp16.uses_scl
    trained = {k: v for k, v in fp16.state_dict().items() if not k.startswith("sparse_arch.scl.")}
    assert not int8.load_state_dict(trained, strict=False).unexpected_keys
    rng = np.random.default_rng(0)
    scl = rng.integers(-128, 128, size=(rows, int8.sparse_arch.scl.dim), dtype=np.int8)  # every int8 value
    scl[0] = 0
    fp16.sparse_arch.load_scl_(scl)
    exact_float_lookups_(int8.sparse_arch.scl, scl, torch.device("cpu"))
    return fp16, int8, scl, rng


def record_float_scl_tables(monkeypatch) -> List[str]:
    """The devices of every real (not ``meta``) float SCL table built from now on (`FrozenEmbeddingCollection`),
    appended to the list returned."""
    from muse_rec.models.frozen_scl import FrozenEmbeddingCollection

    devices: List[str] = []
    build = FrozenEmbeddingCollection.__init__

    def recording_build(self, *args, **kwargs):
        build(self, *args, **kwargs)
        devices.extend(str(p.device) for p in self.parameters() if not p.is_meta)

    monkeypatch.setattr(FrozenEmbeddingCollection, "__init__", recording_build)
    return devices
