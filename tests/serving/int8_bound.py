"""The int8 export's deviation from the float model, bounded per sample from the actual tables.

Derivation (what `check_int8` asserts):

1. Table error, measured. TorchRec's int8 rows store ``u`` (uint8) with an fp16 scale and bias;
   a lookup returns ``scale * u + bias`` (`dequantized_tables`). Per row r of every quantized
   table, ``delta_r = max_j |deq[r, j] - w[r, j]|`` against the float table (about range/510; the
   SCL table is stored losslessly, delta = 0).
2. First order. For a sample i whose discrete decisions (the GSU's picks and every SimTier
   count) are the same in both models, the logit f_i is a smooth function of the rows it looks
   up, so ``df_i = sum_r grad_r f_i . de_r + O(|de|^2)``, and by Hoelder
   ``|sum_r grad_r f_i . de_r| <= sum_r ||grad_r f_i||_1 * delta_r =: B_i``
   (``grad_r f_i``: autograd of the float model's logit of sample i w.r.t. table row r).
3. Remainder. The second-order term is ~``delta / |e|`` (~1e-2) of the first, so a safety factor
   of 2 on B_i (room for a remainder as large as the first-order term) is generous, and a
   float-rounding allowance ``ROUNDING`` (the float parity tolerance) is added.

So ``|f_int8_i - f_float_i| <= 2 B_i + ROUNDING`` for every sample with unchanged decisions. A
broken ID path (a zeroed or shuffled table) moves rows by O(|e|) >> delta and breaks it.
Decisions cannot change for specs whose decisions read no ID embedding (MUSE: SCL cosines,
lossless); for the others (SIM-soft, TWIN, the ID-score ablations) a near-tie may flip, and
those samples are covered by the second check: the int8 model computes exactly the function of
its dequantized tables (``|f_int8 - f_deq| <= ROUNDING`` for all samples).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch

from muse_rec.serving.inference import InferenceModel
from muse_rec.serving.quantize import dequantized_tables, quantize_for_serving

SAFETY = 2.0
ROUNDING = 1e-5  # logits; the float forward's own parity tolerance


def decisions_read_ids(model) -> bool:
    """True when a GSU pick or a SimTier count depends on ID embeddings (may flip under int8)."""
    g, e = model.spec.gsu, model.spec.esu
    return g.kind in ("id_cosine", "attention", "fusion") or g.id_score != "none" or (
        e.similarity in ("id", "fusion") and model.over_arch.similarity is not None)


def _table_params(model) -> Dict[str, torch.nn.Parameter]:
    """Trainable ID table weights by table name (the frozen SCL table excluded)."""
    return {name.split(".")[-2]: p for name, p in model.sparse_arch.named_parameters()
            if name.endswith(".weight") and not name.startswith("scl.")}


def _logits_and_decisions(model, args):
    """Logits ``[B]`` of one request and its discrete decisions ``[B, *]`` (GSU picks, SimTier counts)."""
    inf = InferenceModel(model)
    seq_items, seq_cats, seq_length, user_fields, ci, cc, ca = args
    mask = InferenceModel.seq_mask(seq_items, seq_length)
    dec: List[torch.Tensor] = []
    gsu = model.gsu
    original = gsu.retrieve if gsu is not None else None
    hooks = []
    if gsu is not None:
        def retrieve(search):
            res = original(search)
            dec.append(torch.where(res.valid, res.indices, -1))
            return res
        gsu.retrieve = retrieve
    for m in (model.over_arch.simtier, model.over_arch.branch_simtier, model.over_arch.recent_simtier):
        if m is not None:
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out: dec.append(mod.counts(*inp).to(torch.int64))))
    try:
        with torch.no_grad():
            logits = inf.logits(seq_items, seq_cats, mask, None, user_fields, ci, cc, ca)
    finally:
        if gsu is not None:
            del gsu.retrieve
        for h in hooks:
            h.remove()
    d = torch.cat(dec, dim=1) if dec else torch.zeros(ci.shape[0], 0, dtype=torch.int64)
    return logits, d


def first_order_bound(model, args, deltas: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``B_i`` of every candidate of one request (logit units), see the module docstring."""
    inf = InferenceModel(model)
    params = _table_params(model)
    names = [n for n in params if n in deltas]
    seq_items, seq_cats, seq_length, user_fields, ci, cc, ca = args
    mask = InferenceModel.seq_mask(seq_items, seq_length)
    with torch.enable_grad():
        logits = inf.logits(seq_items, seq_cats, mask, None, user_fields, ci, cc, ca)
        out = torch.zeros(logits.shape[0], dtype=torch.float64)
        for b in range(logits.shape[0]):
            grads = torch.autograd.grad(logits[b], [params[n] for n in names], retain_graph=True, allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    out[b] += float((g.abs().sum(dim=1).double() * deltas[n].double()).sum())
    return out


@dataclass
class Int8Check:
    """Per-sample results: ``dev = |f_int8 - f_float|``, ``bound = SAFETY * B + ROUNDING``."""

    dev: np.ndarray
    bound: np.ndarray
    same_decisions: np.ndarray  # bool
    dev_from_dequantized: np.ndarray  # |f_int8 - f_deq|

    @property
    def violations(self) -> int:
        return int(((self.dev > self.bound) & self.same_decisions).sum())

    @property
    def worst_ratio(self) -> float:
        """max dev / (SAFETY * B + ROUNDING) over samples with unchanged decisions (< 1 passes)."""
        r = self.dev / self.bound
        return float(r[self.same_decisions].max()) if self.same_decisions.any() else 0.0


def quantized_twins(model, scl):
    """(float copy, int8 model, float copy holding the dequantized values, per-row errors)."""
    float_model = copy.deepcopy(model).eval()
    int8_model = copy.deepcopy(model).eval()
    quantize_for_serving(InferenceModel(int8_model), scl, "int8")
    deq = dequantized_tables(InferenceModel(int8_model))
    deq_model = copy.deepcopy(model).eval()
    deltas: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in _table_params(deq_model).items():
            deltas[name] = (deq[name] - p.float()).abs().amax(dim=1)
            p.copy_(deq[name])
    return float_model, int8_model, deq_model, deltas


def check_int8(float_model, int8_model, deq_model, deltas, groups) -> Int8Check:
    """Evaluate the bound on every request of ``groups`` ((rows, InferenceModel args) pairs)."""
    dev, bound, same, dev_deq = [], [], [], []
    for _, args in groups:
        f_float, d_float = _logits_and_decisions(float_model, args)
        f_int8, d_int8 = _logits_and_decisions(int8_model, args)
        f_deq, _ = _logits_and_decisions(deq_model, args)
        b = first_order_bound(float_model, args, deltas)
        dev.append((f_int8 - f_float).abs().double().numpy())
        bound.append((SAFETY * b + ROUNDING).numpy())
        same.append((d_float == d_int8).all(dim=1).numpy())
        dev_deq.append((f_int8 - f_deq).abs().double().numpy())
    return Int8Check(np.concatenate(dev), np.concatenate(bound), np.concatenate(same), np.concatenate(dev_deq))
