"""Sharding, planning and the process group: DistributedModelParallel, TorchRec's planner, gloo / NCCL."""

# The most ranks a sharding plan is made for: every `plan` flag (its world size, its search limit, each
# what-if row and the rows together), a launch profile's nodes x procs_per_node and `reproduce --nproc`,
# as every rank plans the whole world's sharding at its start. TorchRec's planner costs ~22 ms and ~0.2 MB
# per rank on a 2-core box (measured: 2,048 ranks 44 s / 0.58 GB, 4,096 ranks 89 s / 0.81 GB), so 16,384 is
# ~6 min and ~3 GB; 100,000 ranks ran until the kernel killed it, with no output. Here, not in a module
# that imports torch, so that the launcher and the CLI check it before any heavy import.
MAX_PLAN_RANKS = 16384
