"""Silence the library warnings a user can do nothing about, so the run's log stays readable.

Each filter names one message of torch/TorchRec/FBGEMM (2.13/1.8 on CPU; 2.11/1.6 on CUDA, as seen
on an H200 by scripts/cuda_check.sh) that fires on every run (training, or export / rank) and says
nothing about the user's job; anything else still prints.
"""
from __future__ import annotations

import logging
import os
import warnings

_KNOWN = [
    # torch.distributed's own wrappers call the deprecated collectives (inside TorchRec / DCP).
    (FutureWarning, r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"),
    # TorchRec's planner default; its over-estimate is harmless for our small dense part.
    (FutureWarning, r"HeuristicalStorageReservation is known to cause issues"),
    # DMP passes broadcast_buffers to DDP itself.
    (FutureWarning, r"`broadcast_buffers` is deprecated"),
    # FBGEMM's CPU build lacks the SSD optimizers' lookup modules (CUDA/SSD only).
    (DeprecationWarning, r"Failed to import: fbgemm_gpu\.split_embedding_codegen_lookup_invokers"),
    # DCP planning the load of TorchRec's sharded tables (ShardedTensor: TorchRec's, not ours to change).
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor"),
    # DCP reading a checkpoint in one process without a process group: what export and rank do.
    (UserWarning, r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent is to load in a single"),
    # torch.export's archive writer on weights that share no storage group; ours are all on CPU.
    (UserWarning, r"No complete tensor found in the group! Returning the first one"),
    # CUDA (torch 2.11, TorchRec/FBGEMM 1.6): TorchRec's own call of a torch helper it should migrate;
    (UserWarning, r"`_get_pg_default_device` will be deprecated"),
    # FBGEMM's note that its Adam kernel is "experimental" (built without tuning; docs/sharding.md);
    (UserWarning, r"(?:\x1b\[\d+m)?\s*\[FBGEMM_GPU\] NOTE: The training optimizer '[a-z_]+' is marked as"),
    # a B200-only backward path reported off on every other GPU;
    (UserWarning, r"TBE B200 optimization: device_major="),
    # nccl's barrier picking the current device, which is the rank's own (set by DistEnv);
    (UserWarning, r"barrier\(\): using the device under current context"),
    # TorchRec asking a gloo+nccl process group for "the" default device (it then takes cpu);
    (UserWarning, r"Multiple backends are registered with this ProcessGroup"),
    # TorchRec 1.6's torch.export size checks (torchrec/pt2/checks.py) on torch 2.11, at export.
    (FutureWarning, r"guard_size_oblivious will be removed"),
    (FutureWarning, r"_check_is_size will be removed in a future PyTorch release"),
]


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(f in msg for f in self.fragments)


def quiet_known_warnings() -> None:
    for category, pattern in _KNOWN:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    # The planner's dry-run dense-size note and the fx-tracing notice of TrainPipelineSparseDist.
    logging.getLogger("torchrec.distributed.planner.storage_reservations").addFilter(
        _DropMessages("known issue with TorchRec's dense tensor size"))
    # TorchRec logs its intra/cross-host process groups at WARNING on every rank of every run.
    logging.getLogger("torchrec.distributed.comm").addFilter(
        _DropMessages("TORCHREC_RESOLVED_POD_SIZE not set", "[Connection] intra_group", "[Connection] cross_group"))
    # Two TorchRec messages logged on the root logger: its KJT note when `export --float` traces the
    # unquantized model, and, in a single process (no torchrun), its fallback of the hosts' local
    # world size to the world size of 1, which is then exact. With several processes it stays.
    # DCP's note (with a traceback) when a checkpoint's .metadata cannot be read, before it fails
    # anyway: the error then names the file and what failed in one line.
    # FBGEMM 1.6's import-time warning, once per library it loads (14, each 6 lines), that its own
    # table lacks 1.6: muse_rec's version guard (env.check_stack) has checked the torch/FBGEMM pair.
    root = ["Trying to non-strict torch.export KJT to_dict", "Global metadata is not found",
            "Rank local metadata is not found", "_fbgemm_torch_compat_table has no entry for"]
    if os.environ.get("WORLD_SIZE", "1") == "1":  # TorchRec 1.8, and 1.6's second one
        root += ["Could not determine LOCAL_WORLD_SIZE from environment",
                 "Could not determine TOPOLOGY_DOMAIN_MULTIPLE from environment"]
    logging.getLogger().addFilter(_DropMessages(*root))
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    # Loading an exported program: one line per unbacked size symbol (the data-dependent top-k and
    # history lengths) that the saved graph no longer names; ~20 per load, none actionable.
    logging.getLogger("torch._export.serde.serialize").addFilter(
        _DropMessages("did not appear in the graph that was deserialized"))
