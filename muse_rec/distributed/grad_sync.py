"""Dense gradients averaged over the ranks in an order that a resume does not change.

DDP sums each gradient bucket as one flat buffer, and an allreduce over 3 or more ranks (gloo's
ring, NCCL's ring) adds the ranks' values of an element in an order set by the element's place in
that buffer. DDP lays its buckets out by parameter in reverse registration order for a process's
first step, then rebuilds them in the order the gradients became ready. A resumed process's first
step therefore sums in another order than the uninterrupted run did at that step, and the two runs
drifted apart by fp32 rounding from there (measured: 3 ranks, 5 steps + resume + 5 steps, 79 of
108 checkpoint tensors differed, at most 1.5e-7; predictions at most 3e-8). Two ranks' sum is the
same in every order, so 1 and 2 ranks were bit-exact already.

The hook below lays each bucket out again in one fixed order (the model's parameter order) before
the allreduce, so every step of every process sums alike. With the dense parameters in one bucket
(TorchRec's 25 MB cap; the published specs' hold 0.5 MB) a resume is bit-exact at any
number of ranks. Where they span several buckets, which parameters share one can still differ
between the two layouts: correct, but exact only to fp32 rounding.
"""
# No `from __future__ import annotations`: DDP's register_comm_hook checks the hook's annotations against
# dist.GradBucket and torch.futures.Future[torch.Tensor] themselves, and refuses their strings.
from typing import Dict, List

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class _ParameterOrder:
    """The comm hook's state: the process group and each parameter's place in the model's order."""

    def __init__(self, group: dist.ProcessGroup, module: nn.Module) -> None:
        self.group = group
        self.place: Dict[int, int] = {id(p): i for i, p in enumerate(module.parameters())}


def _ordered_mean_hook(state: _ParameterOrder, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average ``bucket``'s gradients over the ranks, summed as one buffer in the model's parameter order.

    Same result as DDP's own allreduce up to the rounding of the sum's order (divided by the world
    size first, as torch's ``allreduce_hook``); the gradients are written back into the bucket's views.
    """
    grads: List[torch.Tensor] = bucket.gradients()
    params = bucket.parameters()
    order = sorted(range(len(params)), key=lambda i: state.place[id(params[i])])
    flat = torch.cat([grads[i].reshape(-1) for i in order])
    flat.div_(state.group.size())
    work = dist.all_reduce(flat, group=state.group, async_op=True)

    def scatter_back(fut: torch.futures.Future[List[torch.Tensor]]) -> torch.Tensor:
        summed = fut.value()[0]
        offset = 0
        for i in order:
            n = grads[i].numel()
            grads[i].copy_(summed[offset:offset + n].view_as(grads[i]))
            offset += n
        return bucket.buffer()

    return work.get_future().then(scatter_back)


def sum_in_parameter_order(ddp: DistributedDataParallel, group: dist.ProcessGroup) -> None:
    """Make ``ddp`` average its gradients with `_ordered_mean_hook`; call before its first forward."""
    ddp.register_comm_hook(_ParameterOrder(group, ddp.module), _ordered_mean_hook)


def sum_dense_gradients_in_parameter_order(dmp: nn.Module, group: dist.ProcessGroup) -> None:
    """`sum_in_parameter_order` for the DDP that a DistributedModelParallel ``dmp`` wraps its unsharded
    modules in; nothing where TorchRec made no DDP (every parameter sharded)."""
    ddp = dmp._dmp_wrapped_module  # TorchRec's DDP (DefaultDataParallelWrapper); no public accessor
    if isinstance(ddp, DistributedDataParallel):
        sum_in_parameter_order(ddp, group)
