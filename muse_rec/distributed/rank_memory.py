"""Memory of a CPU training rank outside its embedding tables, for the planner's reservation.

TorchRec's planner places tables into what is left of a rank's memory after its storage
reservation; `muse-rec plan` reports that reservation per rank beside the tables
(`plan_report.RankReport.reserved_ddr_bytes`), so tables + state + reservation is its
prediction of the rank's whole memory. Left to itself the reservation is TorchRec's heuristic,
6 x the dense parameters + 20 copies of a batch's ids (~0.1 GiB for MUSE at L = 1,000 and 512
samples), the dense part ~3 MB; on CPU this estimate replaces both (`planner.MeasuredCPUReservation`).
Beside it the planner counts, per shard, the lookups' input and output buffers of one batch of the
run's size at the model's ids per sample (every sample its own user: the SCL lookups of 1 + L rows,
~260 B per history position for MUSE), which are most of a step. What a CPU training rank really
holds outside its tables (measured, docs/benchmarks.md "Scale"; 1.6-2.6 GiB at 30M items):

* the process itself: Python, torch, FBGEMM, TorchRec and our modules imported, the process
  group and the DMP built (~290 MiB anonymous RSS with tiny tables), plus what a step keeps
  (autograd state, the fused optimizer's workspace, allocator arenas): ``RUNTIME_BYTES``;
* a step's working set and the batch in flight beyond the lookups' buffers: per sample
  (``BYTES_PER_SAMPLE``: the ESU over the retrieved and recent slots, the tower, their autograd
  state) and per position of a batch (``BYTES_PER_POSITION`` x batch x seq_len: the [B, L] sequence
  ids and masks, GSU scores), of the larger of the train and eval batches (`planned_batch_size`;
  an evaluation holds 0.8-0.9 x a training step of its size, measured);
* each loader worker (a forked process; its own pages, measured as PSS): ``WORKER_BYTES``;
* with several ranks, the all-to-all buffers of the sequence lookups:
  ``COLLECTIVE_BYTES_PER_POSITION``;
* a checkpoint: `torch.distributed.checkpoint` copies each trainable table's local shard out
  of the kernel's flat weight buffer (a view into a larger storage is cloned before it is
  written), weights and fused-optimizer state alike, so while a checkpoint is saved the rank
  holds its trainable tables twice (the frozen SCL table is never saved): `trainable_table_bytes`
  / world size (even row-wise shards). At 30M items that is 1.9 GiB on one rank, the largest
  term; it scales with the vocabulary, the others do not.

* the dense parameters (tower, attentions, SimTiers), replicated on every rank: the fp32
  weight, its gradient and the dense optimizer's two moments (AdamW), ``DENSE_BYTES_PER_PARAMETER``
  each: `dense_parameter_bytes`. For the paper's MUSE (126k parameters) that is 1.9 MiB, inside the
  measured constants below; it is a term so that a much wider tower is reserved for, not
  discovered by the allocator mid-build.

``RUNTIME_BYTES``, ``WORKER_BYTES`` and ``COLLECTIVE_BYTES_PER_POSITION`` were measured with
specs/taobao_mm_full/muse.yaml (L = 1000) on a 20,000-item release-shaped synthetic set (four runs:
batch 250 and 1000, 1 and 2 workers, 1 and 2 gloo ranks; the peak anonymous proportional set size of
each rank with its loader workers minus the bytes its embedding kernels hold), then checked, not
fitted, at 30M items (`bench_scale.py --train-check`: within 2.2% per rank). RUNTIME_BYTES is ~150 MiB
above a rank without loader workers (~285 MiB). ``BYTES_PER_SAMPLE`` and ``BYTES_PER_POSITION`` are
fitted (the latter rounded up 5%) to the peaks of specs/demo/muse.yaml on one rank at one sample per
user, the case the planner's buffers are sized for: batch 8-1,000, L = 1,000 and 100,000
(`tests/distributed/test_rank_memory_measured.py`, docs/plan.md). They replace 254 B per position, fitted
at ~11 samples per user, where a batch holds ~B/11 histories: it left out ~280 B per history position
(the lookups' buffers, now counted at the run's batch), and had TorchRec's 20 copies of a 512-sample
batch's ids on top. At more samples per user the estimate is high (an upper bound: 1.5-3.1x at 11 per
user, demo data). They are for this stack (torch 2.13 CPU, FBGEMM 1.8, TorchRec 1.8); on CUDA the
reservation is left to TorchRec (activations live in HBM there and were not measured).
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn
from torchrec.modules.embedding_configs import DATA_TYPE_NUM_BITS

MiB = 1024**2

RUNTIME_BYTES = 440 * MiB
BYTES_PER_SAMPLE = 80_000
BYTES_PER_POSITION = 84
WORKER_BYTES = 27 * MiB
COLLECTIVE_BYTES_PER_POSITION = 75
DENSE_BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + AdamW's exp_avg and exp_avg_sq


def planned_batch_size(spec, evaluation_only: bool = False) -> int:
    """Samples per rank of the largest batch a run of `spec` holds: ``train.batch_size``, or
    ``train.eval_batch_size`` where the run evaluates (``train.eval_at_end``) with a larger one, or
    only that for an evaluation (`evaluation_only`). A lookup's ids and outputs per sample are the
    same in training and evaluation, so the larger batch sizes TorchRec's lookup buffers."""
    if evaluation_only:
        return spec.train.eval_batch_size
    if spec.train.eval_at_end:
        return max(spec.train.batch_size, spec.train.eval_batch_size)
    return spec.train.batch_size


def planned_batch_source(spec) -> str:
    """Which keys `planned_batch_size` took its figure from, for a plan's header."""
    t = spec.train
    if not t.eval_at_end:
        return f"train.batch_size {t.batch_size}; the run does not evaluate: train.eval_at_end false"
    return f"the larger of train.batch_size {t.batch_size} and train.eval_batch_size {t.eval_batch_size}"


def rank_overhead_bytes(batch_size: int, seq_len: int, num_workers: int, world_size: int) -> int:
    """Estimated bytes of a CPU training rank outside its embedding kernels and the lookups' buffers
    TorchRec's planner counts with them (see module doc); ``batch_size``: samples per rank of the
    largest batch the rank holds (`planned_batch_size`); ``num_workers``: the loader workers it starts."""
    positions = batch_size * seq_len
    total = (RUNTIME_BYTES + BYTES_PER_SAMPLE * batch_size + BYTES_PER_POSITION * positions
             + WORKER_BYTES * max(0, num_workers))
    if world_size > 1:
        total += COLLECTIVE_BYTES_PER_POSITION * positions
    return int(total)


def dense_parameter_bytes(module: nn.Module) -> int:
    """`DENSE_BYTES_PER_PARAMETER` x the parameters of `module` outside its embedding collections
    (unsharded; ``meta`` is fine): what the replicated dense part holds on each rank while training."""
    from torchrec import EmbeddingBagCollection, EmbeddingCollection

    tables = {id(p) for m in module.modules() if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))
              for p in m.parameters()}
    return DENSE_BYTES_PER_PARAMETER * sum(p.numel() for p in module.parameters() if id(p) not in tables)


def trainable_table_bytes(module: nn.Module, sharders: Sequence) -> int:
    """Weights + per-row optimizer state of every trainable (not frozen) table of `module`
    (unsharded; ``meta`` is fine), with the optimizer `sharders` give each collection type."""
    from muse_rec.distributed.optimizer_state import state_bytes, state_optimizers_by_module
    from muse_rec.distributed.planner import embedding_tables
    from muse_rec.models.frozen_scl import FrozenEmbeddingCollection

    optimizer_by_type = state_optimizers_by_module(sharders)
    total = 0
    for path, cfg in embedding_tables(module).values():
        owner = module.get_submodule(path)
        if isinstance(owner, FrozenEmbeddingCollection):
            continue
        weights = cfg.num_embeddings * cfg.embedding_dim * DATA_TYPE_NUM_BITS[cfg.data_type] // 8
        total += weights + state_bytes(optimizer_by_type.get(type(owner)), cfg.num_embeddings, cfg.embedding_dim)
    return total


def spec_rank_overhead_bytes(spec, module: nn.Module, device_type: str, world_size: int,
                             loader_workers: Optional[int] = None, evaluation_only: bool = False) -> Optional[int]:
    """What a rank of `spec`'s job holds outside its embedding kernels on `device_type` (CPU):
    `rank_overhead_bytes` + the checkpoint's copy of its share of the trainable tables + the dense
    parameters' training state. None off CPU (TorchRec's own estimate stays).

    ``loader_workers``: the loader workers each rank starts. None = ``data.num_workers``: a plan is for
    a machine whose CPUs it is not told (the loader starts them all where the CPUs allow them); training
    passes what its loader starts on its own host (`loader.usable_workers`)."""
    if device_type != "cpu":
        return None
    from muse_rec.distributed.sharders import FusedOptimizerConfig, make_sharders

    sharders = make_sharders(FusedOptimizerConfig(name=spec.train.sparse_optimizer.name), device_type)
    checkpoint_copy = -(-trainable_table_bytes(module, sharders) // max(1, world_size))
    workers = spec.data.num_workers if loader_workers is None else loader_workers
    return rank_overhead_bytes(planned_batch_size(spec, evaluation_only), spec.data.seq_len, workers,
                               world_size) + checkpoint_copy + dense_parameter_bytes(module)
