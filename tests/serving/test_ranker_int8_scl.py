"""`Ranker.from_checkpoint` reads its SCL vectors from an int8 table holding the same values as the fp16 one.

The checkpoint Ranker only scores: the frozen fp16 SCL table (256 B per item row) it loaded is replaced by the
int8 table `muse-rec export`'s check uses (`load_trained_model(..., int8_scl=True)`, 144 B per row), whose fp32
lookups are the same values, so every score is the same bit for bit.
"""
from __future__ import annotations

import pytest
import torch

from muse_rec.serving import FloatScorer, InferenceModel, Ranker
from muse_rec.serving.ranker import build_context
from tests.serving.conftest import SEQ_LEN
from tests.serving.helpers import fp16_and_int8_scl_twins, record_float_scl_tables

# The spec families whose GSU/ESU read SCL vectors: MUSE's SCL-cosine GSU, SIM-soft, MISS, MUSE's fusion.
_SCL_SPECS = ("specs/methods/muse.yaml", "specs/methods/sim_soft.yaml", "specs/methods/miss.yaml",
              "specs/methods/muse_fusion.yaml")


def test_checkpoint_ranker_never_allocates_the_fp16_scl_table(trained_run, trained_model, monkeypatch):
    """No float SCL table is allocated by `Ranker.from_checkpoint`; its SCL collection is TorchRec's int8 one, and
    its scores equal those of the fp16 table's Ranker (the trained model as loaded before) bit for bit."""
    from torchrec import DataType
    from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection

    from muse_rec.serving.int8_check import check_requests

    float_tables = record_float_scl_tables(monkeypatch)
    spec = trained_run.spec()
    with Ranker.from_checkpoint(spec) as int8_ranker:
        assert float_tables == [], f"a float SCL table was allocated on {float_tables}"
        monkeypatch.undo()
        collection = int8_ranker.scorer.model.model.sparse_arch.scl.collection
        assert isinstance(collection, QuantEmbeddingCollection)
        assert [c.data_type for c in collection.embedding_configs()] == [DataType.INT8]
        fp16_model, data = trained_model
        requests = check_requests(data, spec.data.eval_split)
        with Ranker(FloatScorer(InferenceModel(fp16_model)), data, spec.data.eval_split, SEQ_LEN) as fp16_ranker:
            for user, candidates in zip(requests.users, requests.candidates):
                p8 = torch.from_numpy(int8_ranker.score(user, candidates))
                p16 = torch.from_numpy(fp16_ranker.score(user, candidates))
                assert torch.equal(p8, p16), f"user {user}: scores differ by up to {(p8 - p16).abs().max().item()}"


@pytest.mark.parametrize("spec_file", _SCL_SPECS)
def test_the_ranker_scores_of_the_int8_table_are_the_fp16_tables(spec_file):
    """The Ranker's float path (history SCL vectors from its cache, the candidates' from the model's table) scores
    a model with the int8 table exactly as the same model with the fp16 table loaded from the same values."""
    rows, seq_len, history, candidates = 300, 50, 45, 7
    fp16, int8, scl, rng = fp16_and_int8_scl_twins(spec_file, rows, seq_len)
    items, cats = rng.integers(1, rows, history), rng.integers(1, rows, history)
    fields = rng.integers(0, rows, 6)
    cand = [torch.from_numpy(rng.integers(0, rows, candidates)), torch.from_numpy(rng.integers(0, rows, candidates)),
            torch.from_numpy(rng.integers(0, rows, size=(candidates, 2)))]
    scores = []
    for model in (fp16, int8):
        scorer = FloatScorer(InferenceModel(model))
        scores.append(scorer(build_context(1, True, items, cats, fields, scl, scorer, seq_len), *cand))
    gap = (scores[0] - scores[1]).abs().max().item()
    assert torch.equal(scores[0], scores[1]), f"{spec_file}: scores differ by up to {gap}"
