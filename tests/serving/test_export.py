"""The exported, quantized program: reloads without muse_rec and matches the trained model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from muse_rec.metrics import gauc
from muse_rec.serving.export import MANIFEST_FILE, PROGRAM_FILE, ExportError, read_manifest
from tests.serving.conftest import SEQ_LEN
from tests.serving.helpers import training_predictions

# Measured on the 5-step tiny run: max |dp| ~1.5e-5, |dGAUC| ~0 (int8 ID tables, lossless SCL).
# The bounds leave room for longer-trained tables, whose int8 rounding moves scores more.
MAX_ABS_DP = 1e-2
MAX_ABS_DGAUC = 5e-3

# Runs in a fresh interpreter: -I (isolated: no PYTHONPATH, no cwd on sys.path), from a cwd
# outside the repo. Only torch, torchrec and fbgemm are imported.
_FRESH = r"""
import sys, torch, torchrec, fbgemm_gpu
from torchrec.pt2.utils import register_fake_classes
register_fake_classes()
program = torch.export.load(sys.argv[1]).module()
groups = torch.load(sys.argv[2])
with torch.no_grad():
    out = [program(*args) for args in groups]
torch.save(out, sys.argv[3])
print("MUSE_REC_IMPORTED" if any(m == "muse_rec" or m.startswith("muse_rec.") for m in sys.modules) else "CLEAN")
"""


def test_manifest_and_table_bytes(trained_run):
    m = read_manifest(str(trained_run.exported))
    assert m["seq_len"] == SEQ_LEN and m["quantized"] is True
    bpr = m["tables"]["bytes_per_row"]
    # int8 SCL: 128 values + fp16 scale/bias, padded to 16 B = 144 B/row (training: fp16, 256 B/row).
    assert bpr["scl"] == 144
    assert bpr["item"] == 32  # 16 int8 values + 4 B scale/bias, padded to 16 (fp32 in training: 64)
    assert m["tables"]["scl_dtype"] == "int8"


def test_exported_program_in_fresh_process_matches_trained_model(trained_run, trained_model, tmp_path):
    model, data = trained_model
    ref = training_predictions(model, data, "test", SEQ_LEN)
    torch.save([args for _, args in ref.groups], tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _FRESH, str(trained_run.exported / PROGRAM_FILE),
         str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "CLEAN", "loading the program imported muse_rec"
    outs = torch.load(tmp_path / "out.pt")
    probs = np.full(ref.probs.shape, np.nan, np.float32)
    for (rows, _), o in zip(ref.groups, outs):
        assert o.shape == (len(rows),)
        probs[rows] = o.numpy()
    assert not np.isnan(probs).any()
    dp = float(np.abs(probs - ref.probs).max())
    dgauc = abs(gauc(ref.user_keys, probs, ref.labels) - gauc(ref.user_keys, ref.probs, ref.labels))
    print(f"exported int8 vs trained float: max |dp| = {dp:.2e}, |dGAUC| = {dgauc:.2e}")
    assert dp < MAX_ABS_DP
    assert dgauc < MAX_ABS_DGAUC
    # Quantization really happened (the program is not the float model in disguise) ...
    assert dp > 0.0


def test_int8_scl_table_is_lossless(trained_run, trained_model):
    """The quantized SCL lookups return the prepared int8 vectors exactly."""
    from muse_rec.serving.inference import InferenceModel
    from muse_rec.serving.export import load_trained_model
    from muse_rec.serving.quantize import quantize_for_serving

    _, data = trained_model
    model, _ = load_trained_model(trained_run.spec(), data)
    inf = InferenceModel(model)
    quantize_for_serving(inf, data.scl(), "int8")
    n = data.scl().shape[0]
    items = torch.arange(n)
    target, seq = inf.model.sparse_arch.scl_vectors(items, items[None, :7], torch.ones(1, 7, dtype=torch.bool))
    expect = torch.from_numpy(np.asarray(data.scl())).float()
    assert torch.equal(target.float(), expect)
    assert torch.equal(seq[0].float(), expect[:7])


def test_exported_accepts_candidate_counts_in_range(trained_run):
    from muse_rec.serving.export import example_inputs, load_program

    program = load_program(str(trained_run.exported))
    with torch.no_grad():
        for b in (1, 2, 3, 1000):
            assert program(*example_inputs(SEQ_LEN, b)).shape == (b,)


def test_read_manifest_errors(tmp_path, trained_run):
    with pytest.raises(ExportError, match="no manifest.json"):
        read_manifest(str(tmp_path))
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"program": "x.pt2", "seq_len": 1, "min_candidates": 1,
                                                      "max_candidates": 4, "vocab_sizes": {}}))
    with pytest.raises(ExportError, match="program file 'x.pt2' is missing"):
        read_manifest(str(tmp_path))


def test_export_cli_without_checkpoint_fails_clearly(trained_run, tmp_path):
    from tests.conftest import REPO, subprocess_env
    from tests.serving.conftest import SPEC

    proc = subprocess.run([sys.executable, "-m", "muse_rec.cli", "export", "--spec", str(SPEC), *trained_run.cli_sets(),
                           "--set", f"output_dir={tmp_path}/none", "--out", str(tmp_path / "x")],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "no complete checkpoint" in proc.stderr
