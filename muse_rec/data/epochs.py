"""An epoch's arithmetic in steps: how many, which samples a step covers, where a resume starts.

Pure integer functions of the split size, batch size and world size (no torch, no TorchRec), so
that the resume checks (`training/run_record.py`) run before the training stack is imported: a
refused run answers in a fraction of the ~4 s TorchRec's import takes. `loader.py` partitions
the batches exactly as these functions count them (see its module docstring).
"""
from __future__ import annotations


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Steps of one epoch: every rank's batch count, the global batches ``ceil(N / B)`` dealt round
    robin over ``W`` ranks (the last step's missing batches are padding)."""
    global_batches = -(-num_samples // batch_size)
    return -(-global_batches // world_size)


def resume_batch(batch_in_epoch: int, saved_batch_size: int, saved_world_size: int, batch_size: int,
                 world_size: int) -> int:
    """This run's first step of the epoch a checkpoint stopped in (its ``start_batch``), at this run's
    batch size and world size: step ``j`` of ``W`` ranks trains global batches ``j * W .. j * W + W - 1``
    (also when shuffled: the batch order depends on the batch size only), so the checkpoint's
    ``batch_in_epoch * saved_world_size`` global batches are done.

    ``saved_batch_size`` 0 = not recorded (older checkpoints): taken to be ``batch_size``.
    Raises ValueError where the rest of the epoch cannot start exactly there: another batch size
    mid-epoch (other batches, another shuffle), or a world size that does not divide the batches done.
    """
    if batch_in_epoch == 0:
        return 0
    if saved_batch_size and saved_batch_size != batch_size:
        raise ValueError(f"it stopped {batch_in_epoch} step(s) into an epoch at train.batch_size {saved_batch_size}; "
                         f"at {batch_size} the rest of that epoch would re-read or skip samples: resume with "
                         f"train.batch_size={saved_batch_size}")
    done = batch_in_epoch * saved_world_size
    if done % world_size:
        raise ValueError(f"it was saved by {saved_world_size} rank(s) {batch_in_epoch} step(s) into an epoch, "
                         f"after {done} global batches, where {world_size} ranks cannot continue evenly: resume on "
                         f"a number of ranks that divides {done}, e.g. {saved_world_size}")
    return done // world_size
