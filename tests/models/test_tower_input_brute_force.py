"""MUSE's and SIM-hard's tower input (`OverArch.features`) against a float64 loop over MUSE.md's definitions.

The loop reads only the model's parameters and the SCL table; it recomputes the picks (by the GSU's rule),
R, SimTier of the picks, SA-TA (reference variant), SimTier of the recent R, TA over them and both mean
pools, sample by sample. The batch holds what the module tests meet one at a time: a target that is in its
user's history (cosine 1), a target and a behaviour without an SCL vector, a repeated behaviour (equal
cosines), a history shorter than K, an empty history, and users with several samples.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from muse_rec.models.ctr_model import LifelongCTRModel
from muse_rec.models.sparse_arch import REQUIRED_TABLES
from muse_rec.modules import Histories
from muse_rec.spec import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"
ITEMS, CATS, L, K, R = 40, 6, 12, 5, 4
NO_VECTOR = (7, 9)  # item rows without an SCL vector


def _model(spec_file: str) -> Tuple[LifelongCTRModel, np.ndarray]:
    spec = load_spec(SPECS / spec_file, [f"data.seq_len={L}", f"model.gsu.top_k={K}", f"model.short_term.recent={R}"])
    sizes = {t: ITEMS if t == "item" else CATS if t == "category" else 50 for t in REQUIRED_TABLES}
    torch.manual_seed(0)
    model = LifelongCTRModel(spec.model, sizes, seq_len=L).eval()
    scl = np.random.default_rng(0).integers(-127, 128, size=(ITEMS, 128), dtype=np.int8)
    scl[[0, *NO_VECTOR]] = 0
    with torch.no_grad():  # trained-like scales: the init's ~1e-3 tables would hide a wrong term
        for name, p in model.named_parameters():
            if not name.startswith("sparse_arch.scl."):
                p.copy_(torch.randn_like(p) * 0.4 + (0.3 if name.endswith("temperature") else 0.0))
    model.sparse_arch.load_scl_(scl)
    return model, scl


def _cos(scl: np.ndarray, a: int, b: int) -> Optional[float]:
    va, vb = scl[a].astype(np.float64), scl[b].astype(np.float64)
    na, nb = np.linalg.norm(va), np.linalg.norm(vb)
    return None if na == 0 or nb == 0 else float(va @ vb / (na * nb))


def _histogram(cosines: List[Optional[float]], weight: torch.Tensor) -> torch.Tensor:
    """SimTier: tier ceil(r / 0.1) + 10 of each cosine (none: not counted), log(1 + count) * w."""
    counts = torch.zeros(weight.shape[0], dtype=torch.float64)
    for r in cosines:
        if r is not None:
            counts[min(max(math.ceil(r / 0.1) + 10, 0), weight.shape[0] - 1)] += 1
    return torch.log1p(counts) * weight.detach().double()


def _linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return layer.weight.detach().double() @ x + layer.bias.detach().double()


@pytest.mark.parametrize("spec_file", ["methods/muse.yaml", "methods/sim_hard.yaml"])
def test_tower_input_matches_the_definitions(spec_file):
    model, scl = _model(spec_file)
    g = torch.Generator().manual_seed(1)
    U, B = 3, 6
    items = torch.randint(1, ITEMS, (U, L), generator=g)
    cats = torch.randint(1, CATS, (U, L), generator=g)
    items[:, 3], cats[:, 3] = items[:, 2], cats[:, 2]  # a repeated behaviour
    items[0, 10] = NO_VECTOR[0]
    lengths = torch.tensor([L, 7, 0])  # full; K < 7 < L; empty
    mask = torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)
    items[~mask], cats[~mask] = 0, 0
    index = torch.tensor([0, 1, 0, 2, 1, 0])
    target_item = torch.tensor([int(items[0, 5]), NO_VECTOR[1], 3, 4, 11, 13])
    target_cat = torch.tensor([int(cats[0, 5]), int(cats[1, 9]), 2, 3, int(cats[1, 8]), 0])  # 0: unknown
    pooled = torch.randn(B, model.sparse_arch.pooled_dim, generator=g)

    captured = {}
    features = model.over_arch.features

    def keep(*args, **kwargs):
        captured["out"] = features(*args, **kwargs)
        return captured["out"]

    model.over_arch.features = keep
    with torch.no_grad():
        model.score(pooled, target_item, target_cat, Histories(items, cats, mask, index))

    named = dict(model.named_parameters())
    item_w, cat_w = named["sparse_arch.ids.embeddings.item.weight"], named["sparse_arch.ids.embeddings.category.weight"]
    tok = lambda i, c: torch.cat([item_w[int(i)], cat_w[int(c)]]).detach().double()  # noqa: E731
    oa = model.over_arch
    sata = oa.esu_attention
    att = sata.attention
    g1, g2, g3 = sata.gates.detach().double().tolist()
    tau = float(sata.temperature.detach())
    rows = []
    for b in range(B):
        u, t, c = int(index[b]), int(target_item[b]), int(target_cat[b])
        real = [p for p in range(L) if mask[u, p]]
        if spec_file == "methods/muse.yaml":  # highest cosine first (ties: lowest position), then no vector, newest first
            scored = sorted((p for p in real if _cos(scl, t, int(items[u, p])) is not None),
                            key=lambda p: (-_cos(scl, t, int(items[u, p])), p))
            picks = (scored + sorted(set(real) - set(scored), reverse=True))[:K]
        else:  # SIM-hard: the newest K behaviours in the target's known category
            picks = [p for p in reversed(real) if int(cats[u, p]) == c != 0][:K]
        r = [_cos(scl, t, int(items[u, p])) for p in picks]
        keys = [tok(items[u, p], cats[u, p]) for p in picks]
        parts = [pooled[b].double(), tok(t, c), _histogram(r, oa.simtier.weight)]
        # SA-TA, reference variant: SiLU projections, no sqrt(H), R / tau (0 where there is no cosine).
        q = F.silu(_linear(att.w_q, tok(t, c)))
        alpha = []
        for key, rk in zip(keys, r):
            a_id, rr = float(q @ F.silu(_linear(att.w_k, key))), (0.0 if rk is None else rk) / tau
            alpha.append(g1 * a_id + g2 * rr + g3 * a_id * rr)
        weights = torch.softmax(torch.tensor(alpha, dtype=torch.float64), 0) if picks else []
        parts.append(sum((w * F.silu(_linear(att.w_v, key)) for w, key in zip(weights, keys)),
                         torch.zeros(att.output_dim, dtype=torch.float64)))
        recent = [p for p in range(L - R, L) if mask[u, p]]
        parts.append(_histogram([_cos(scl, t, int(items[u, p])) for p in recent], oa.recent_simtier.weight))
        # TA over the recent R: linear projections, / sqrt(H), values = the tokens.
        ra, rec_keys = oa.recent_attention, [tok(items[u, p], cats[u, p]) for p in recent]
        q2 = _linear(ra.w_q, tok(t, c))
        logits = [float(q2 @ _linear(ra.w_k, key)) / math.sqrt(ra.w_q.out_features) for key in rec_keys]
        weights = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0) if recent else []
        zero = torch.zeros(model.sparse_arch.token_dim, dtype=torch.float64)
        parts.append(sum((w * key for w, key in zip(weights, rec_keys)), zero))
        parts.append(sum(rec_keys, zero) / max(len(rec_keys), 1))
        parts.append(sum(keys, zero) / max(len(keys), 1))
        rows.append(torch.cat(parts))
    expected = torch.stack(rows)
    # fp32 against fp64: sums of <= 32 products of O(1) values per projection, softmax of <= K terms; the
    # model's error is a few hundred fp32 ulps of O(1) at most (measured 2.5e-6 at these scales).
    torch.testing.assert_close(captured["out"].double(), expected, rtol=0, atol=2e-5)
