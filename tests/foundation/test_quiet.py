"""`quiet_known_warnings` drops the library messages a user can do nothing about, and only those."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, subprocess_env

# A fresh interpreter: the filters are process-wide, and `logging.warning` on the root logger is how
# TorchRec emits both messages (torchrec/distributed/comm.py, torchrec/sparse/jagged_tensor.py).
_EMIT = """
import logging, sys
from muse_rec.quiet import quiet_known_warnings
quiet_known_warnings()
logging.warning("Could not determine LOCAL_WORLD_SIZE from environment, falling back to WORLD_SIZE.")
logging.warning("Could not determine TOPOLOGY_DOMAIN_MULTIPLE from environment, utilizing LOCAL_WORLD_SIZE instead.")
logging.warning("Trying to non-strict torch.export KJT to_dict, which is extremely slow and not recommended!")
logging.warning("a message of the user's job")
logging.warning("\\n  _fbgemm_torch_compat_table has no entry for 1.6.0 of FBGEMM;\\n  cannot determine compatibility")
import warnings
for m in ("`_get_pg_default_device` will be deprecated, it only stays for backward-compatibility reason.",
          "\\x1b[93m\\n        [FBGEMM_GPU] NOTE: The training optimizer 'adam' is marked as EXPERIMENTAL and thus",
          "Multiple backends are registered with this ProcessGroup. We cannot determine which one is the default.",
          "TBE B200 optimization: device_major=9, feature_enabled=0, segment_length=1024",
          "barrier(): using the device under current context. You can specify `device_id`",
          "a warning about the user's job"):
    warnings.warn(m, UserWarning)
for m in ("guard_size_oblivious will be removed. Consider using explicit unbacked handling",
          "_check_is_size will be removed in a future PyTorch release along with guard_size_oblivious."):
    warnings.warn(m, FutureWarning)
"""


@pytest.mark.parametrize("world_size,local_size_note", [(None, False), ("1", False), ("4", True)])
def test_root_logger_notes_are_dropped_where_they_say_nothing(world_size, local_size_note):
    """One process: falling back to a local world size of 1 is exact, so the note (printed on about
    one run in three, before a bad input's one line too) goes; with several processes it may
    matter, and stays. The KJT export note always goes; anything else stays."""
    env = subprocess_env(**({"WORLD_SIZE": world_size} if world_size else {}))
    if world_size is None:
        env.pop("WORLD_SIZE", None)
    out = subprocess.run([sys.executable, "-c", _EMIT], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert ("LOCAL_WORLD_SIZE from" in out.stderr) == local_size_note, out.stderr
    assert ("TOPOLOGY_DOMAIN_MULTIPLE" in out.stderr) == local_size_note, out.stderr
    assert "non-strict torch.export KJT" not in out.stderr
    assert "a message of the user's job" in out.stderr
    # The CUDA stack's (torch 2.11, TorchRec/FBGEMM 1.6) notes seen on an H200, and only those.
    for note in ("_fbgemm_torch_compat_table", "_get_pg_default_device", "[FBGEMM_GPU] NOTE", "TBE B200",
                 "barrier(): using the device", "Multiple backends are registered", "guard_size_oblivious",
                 "_check_is_size"):
        assert note not in out.stderr, note
    assert "a warning about the user's job" in out.stderr
