"""The int8 check's float model reads its SCL vectors from an int8 table holding the same values.

`muse-rec export` scores the check's requests with the float model before quantizing. Its fp16 SCL table
(256 B per item row, the largest of the float model) was held only for those scores; the int8 table
(`exact_float_lookups_`, 144 B per row) returns the same lookups, so the scores, the manifest and the
program are unchanged.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from muse_rec.serving.inference import InferenceModel
from tests.serving.conftest import SEQ_LEN, SPEC
from tests.serving.helpers import fp16_and_int8_scl_twins, record_float_scl_tables

# Every spec family that reads SCL vectors: MUSE's SCL-cosine GSU, SIM-soft, MISS, MUSE's fusion, the
# attention GSU ablation (projections over the SCL vectors).
_SCL_SPECS = ("specs/methods/muse.yaml", "specs/methods/sim_soft.yaml", "specs/methods/miss.yaml",
              "specs/methods/muse_fusion.yaml", "specs/ablations/gsu_score_mm_attention.yaml")


def test_export_never_allocates_the_fp16_scl_table(trained_run, tmp_path, monkeypatch):
    """The float model that the int8 check scores holds its SCL table as int8, and no float SCL table is ever
    allocated by `muse-rec export`. Before, the fp16 table (256 B per item row) was built, loaded and held through
    the float model's phases, the peak of the export (~62 GB at Taobao-MM's 243M item rows)."""
    from torchrec import DataType
    from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection

    import muse_rec.serving.export as export
    from muse_rec.spec import load_spec

    float_tables = record_float_scl_tables(monkeypatch)
    scored_with = []
    score = export.score_requests

    def recording_score(model, *args, **kwargs):
        scored_with.append(model.model.sparse_arch.scl.collection)
        return score(model, *args, **kwargs)

    monkeypatch.setattr(export, "score_requests", recording_score)
    export.export_model(load_spec(SPEC, trained_run.overrides), str(tmp_path / "out"))
    assert float_tables == [], f"a float SCL table was allocated on {float_tables}"
    float_check = scored_with[0]
    assert isinstance(float_check, QuantEmbeddingCollection)
    assert [c.data_type for c in float_check.embedding_configs()] == [DataType.INT8]


@pytest.mark.parametrize("spec_file", _SCL_SPECS)
def test_the_int8_table_gives_the_float_models_scores_bit_for_bit(spec_file):
    """A model whose SCL table is int8 (`exact_float_lookups_`) scores exactly as the same model with the fp16
    table loaded from the same values: same lookup tensors (dtype and values) and same click probabilities."""
    rows, seq_len, candidates = 300, 50, 7
    fp16, int8, _, rng = fp16_and_int8_scl_twins(spec_file, rows, seq_len)
    seq_items = torch.from_numpy(rng.integers(1, rows, size=(1, seq_len)))
    # seq_items, seq_cats, seq_length (5 padding positions), user_fields, cand_items, cand_cats, cand_attrs
    request = (seq_items, torch.from_numpy(rng.integers(1, rows, size=(1, seq_len))), torch.tensor([seq_len - 5]),
               torch.from_numpy(rng.integers(0, rows, size=(1, 6))),
               torch.from_numpy(rng.integers(0, rows, candidates)), torch.from_numpy(rng.integers(0, rows, candidates)),
               torch.from_numpy(rng.integers(0, rows, size=(candidates, 2))))
    with torch.no_grad():
        for a, b in zip(fp16.sparse_arch.scl_vectors(request[4], seq_items, seq_items > 0),
                        int8.sparse_arch.scl_vectors(request[4], seq_items, seq_items > 0)):
            assert a.dtype == b.dtype and torch.equal(a, b)
        p16, p8 = InferenceModel(fp16)(*request), InferenceModel(int8)(*request)
    assert torch.equal(p16, p8), f"{spec_file}: scores differ by up to {(p16 - p8).abs().max().item()}"


def test_the_checks_float_scores_and_the_program_are_those_of_the_fp16_table(trained_run, trained_model):
    """On the trained run: the check's float scores are bit-identical whichever table they read, and the program
    quantized and exported afterwards is byte-identical."""
    from muse_rec.serving.export import export_program, load_trained_model
    from muse_rec.serving.int8_check import check_requests, score_requests
    from muse_rec.serving.program_file import save_program
    from muse_rec.serving.quantize import quantize_for_serving

    _, data = trained_model
    spec = trained_run.spec()
    requests = check_requests(data, spec.data.eval_split)
    programs, scores = [], []
    for int8_scl in (False, True):
        model = InferenceModel(load_trained_model(spec, data, int8_scl=int8_scl)[0])
        scores.append(score_requests(model, data, requests, SEQ_LEN))
        quantize_for_serving(model, data.scl())
        buffer = io.BytesIO()
        save_program(export_program(model, SEQ_LEN), buffer)
        programs.append(buffer.getvalue())
    assert scores[0].size and np.array_equal(scores[0], scores[1])
    assert programs[0] == programs[1]
