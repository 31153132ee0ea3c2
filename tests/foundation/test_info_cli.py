"""`muse-rec info` reports the stack, the device and the fused optimizers the device supports."""
from __future__ import annotations

import json
import subprocess

from tests.conftest import subprocess_env, venv_bin


def test_info_json():
    out = subprocess.run([venv_bin("muse-rec"), "info", "--json"], capture_output=True, text=True, env=subprocess_env())
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["consistent"] is True and info["problems"] == []
    assert info["torch"].startswith("2.13")
    assert info["torchrec"] == "1.8.0"
    assert info["device"] in ("cpu", "cuda")
    if info["device"] == "cpu":
        assert info["backend"] == "gloo"
        assert "exact_row_wise_adagrad" in info["fused_embedding_optimizers"]
        assert "adam" not in info["fused_embedding_optimizers"]  # CUDA-only in FBGEMM
        assert info["row_sparse_embedding_optimizers"] == ["adam"]  # ... so CPU runs it as RowSparseAdam
    else:
        assert info["row_sparse_embedding_optimizers"] == []  # CUDA: FBGEMM's fused Adam


def test_info_table_and_help():
    out = subprocess.run([venv_bin("muse-rec"), "info"], capture_output=True, text=True, env=subprocess_env())
    assert out.returncode == 0, out.stderr
    assert "fused embedding optimizers" in out.stdout and "consistent" in out.stdout
    assert "row-sparse embedding optimizers" in out.stdout
    help_out = subprocess.run([venv_bin("muse-rec"), "--help"], capture_output=True, text=True, env=subprocess_env())
    assert help_out.returncode == 0 and "info" in help_out.stdout


def test_fused_optimizers_on_cpu_are_accepted_by_fbgemm():
    # Each optimizer `info` lists for CPU must really construct a CPU TBE.
    import torch
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    from muse_rec.env import fused_optimizers

    for name in fused_optimizers("cpu"):
        tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(10, 4, EmbeddingLocation.HOST, ComputeDevice.CPU)], optimizer=EmbOptimType(name), learning_rate=0.1
        )
        out = tbe(torch.tensor([1, 2], dtype=torch.int64), torch.tensor([0, 1, 2], dtype=torch.int64))
        out.sum().backward()
    try:
        SplitTableBatchedEmbeddingBagsCodegen(
            [(10, 4, EmbeddingLocation.HOST, ComputeDevice.CPU)], optimizer=EmbOptimType.ADAM
        )
        adam_on_cpu = True
    except Exception:
        adam_on_cpu = False
    assert not adam_on_cpu, "FBGEMM now supports Adam on CPU: update muse_rec.env.fused_optimizers"


def test_warnings_are_one_line_each():
    """muse_rec's own warnings speak to the user; a library's keep their location, on one line."""
    import os

    import muse_rec
    from muse_rec.cli import _one_line_warning

    fmt = _one_line_warning("prepare")
    ours = os.path.join(os.path.dirname(muse_rec.__file__), "data", "prepare.py")
    assert fmt("3 duplicate rows", UserWarning, ours, 286, "warnings.warn(...)") == \
        "muse-rec prepare: warning: 3 duplicate rows\n"
    lib = "/usr/lib/python3/site-packages/torch/x.py"
    assert fmt("a\n  b", FutureWarning, lib, 7, "src") == f"{lib}:7: FutureWarning: a b\n"
