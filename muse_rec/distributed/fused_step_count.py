"""FBGEMM's fused optimizers count training steps, not lookups.

FBGEMM's table-batched kernel advances its optimizer step (``iter``, which Adam's and LAMB's bias
correction read: ``m / (1 - beta1^iter)``, ``v / (1 - beta2^iter)``) on *every* forward, with or
without grad. SIM-soft, TWIN, MUSE-fusion and the ID-scoring GSU ablations look their ID table up
twice more per step without grad (whole-sequence scoring), so on CUDA their Adam ran its bias
correction at 3x the step count: updates off by up to sqrt(3) for the first few thousand steps
(beta2 = 0.999), and unlike torch SparseAdam and the CPU route (`RowSparseAdam` counts steps).
Measured on an H200 with fbgemm-gpu 1.6 (tests/distributed/test_fused_adam_cuda.py, one no-grad
lookup between steps): rows 7e-3 away from SparseAdam's after 4 steps at lr 2e-2 without this,
1.6e-7 with it. The fix puts the counters back after a no-grad lookup; the lookup is untouched.

Neither TorchRec's checkpoint nor its optimizer state holds that counter: a resumed run's FBGEMM
started its bias correction again from step 1 (tiny steps for the first hundreds of updates, as
beta2^t decays), where an uninterrupted run was at step N. `load_checkpoint` (with an optimizer)
calls `set_fused_optimizer_step` with the checkpoint's step, as RowSparseAdam's saved step does on CPU.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from muse_rec.distributed.sparse_adam import fused_kernels

_COUNTERS = ("iter_cpu", "iter")  # FBGEMM's host copy (read by the kernel) and its checkpointed one


def count_only_training_lookups(dmp: nn.Module) -> int:
    """Hook every fused kernel of `dmp` so that a forward without grad leaves its optimizer's step
    counters as they were. Returns the number of kernels hooked."""
    saved: Dict[int, Dict[str, torch.Tensor]] = {}

    def before(kernel: nn.Module, _args: Any) -> None:
        if not torch.is_grad_enabled():
            tbe = kernel.emb_module  # type: ignore[attr-defined]
            saved[id(kernel)] = {c: getattr(tbe, c).clone() for c in _COUNTERS if hasattr(tbe, c)}

    def after(kernel: nn.Module, _args: Any, _out: Any) -> None:
        tbe = kernel.emb_module  # type: ignore[attr-defined]
        for name, value in saved.pop(id(kernel), {}).items():
            getattr(tbe, name).copy_(value)

    kernels = fused_kernels(dmp)
    for kernel in kernels:
        kernel.register_forward_pre_hook(before)
        kernel.register_forward_hook(after)
    return len(kernels)


def set_fused_optimizer_step(dmp: nn.Module, step: int) -> None:
    """Set every fused kernel's optimizer step of `dmp` to `step` (the training steps a loaded
    checkpoint has behind it), so the next training lookup counts step + 1."""
    for kernel in fused_kernels(dmp):
        tbe = kernel.emb_module  # type: ignore[attr-defined]
        for name in _COUNTERS:
            if hasattr(tbe, name):
                getattr(tbe, name).fill_(step)
