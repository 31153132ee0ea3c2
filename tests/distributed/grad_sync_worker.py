"""One rank of test_grad_sync.py: DDP's gradient mean under `sum_in_parameter_order`.

Run as ``python -m tests.distributed.grad_sync_worker OUT_DIR`` with RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT set. Writes ``OUT_DIR/rank<r>.json``: whether a process's second step (DDP's rebuilt buckets)
summed bit for bit as a fresh process's first step does on the same batch, and the largest excess of each
step's gradients over the exact mean's fp32 error bound.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from muse_rec.distributed.env import DistEnv, destroy_distributed, init_distributed
from muse_rec.distributed.grad_sync import sum_in_parameter_order

WIDTH = 16  # features of the toy model's layers
ROWS = 8  # rows of a rank's batch


class Reversed(nn.Module):
    """Two layers registered in one order and used in the other: the order gradients become ready in
    (``first`` last) is not DDP's initial bucket order (reverse registration), so the rebuild moves them."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(WIDTH, WIDTH)
        self.second = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.first(torch.tanh(self.second(x))).square().mean()


def batch(step: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s batch of step ``step``, the same in every process that asks."""
    return torch.randn(ROWS, WIDTH, generator=torch.Generator().manual_seed(1000 * step + rank))


def grads(model: nn.Module) -> List[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def step(ddp: DistributedDataParallel, x: torch.Tensor) -> List[torch.Tensor]:
    ddp.zero_grad(set_to_none=False)
    ddp(x).backward()
    return grads(ddp.module)


def excess_over_bound(got: List[torch.Tensor], step_no: int, reference: nn.Module, world: int) -> float:
    """The largest amount by which ``got`` misses the exact (float64) mean of every rank's fp32 gradient
    beyond fp32's error bound for a mean of ``world`` terms: ``world`` roundings (the division of each term
    and ``world - 1`` additions), each at most half an fp32 ulp of the sum of magnitudes. Each rank's
    gradient is recomputed here from its batch: the same weights, kernels and thread count give its bits."""
    per_rank = []
    for r in range(world):
        reference.zero_grad()
        reference(batch(step_no, r)).backward()
        per_rank.append([p.grad.double() for p in reference.parameters()])
    worst = 0.0
    for i, g in enumerate(got):
        terms = torch.stack([per_rank[r][i] for r in range(world)])
        exact = terms.sum(0) / world
        bound = world * (torch.finfo(torch.float32).eps / 2) * terms.abs().sum(0) / world
        worst = max(worst, float(((g.double() - exact).abs() - bound).max()))
    return worst


def main(out_dir: Path) -> None:
    env = init_distributed(DistEnv.from_environ(device_type="cpu"))
    group = torch.distributed.GroupMember.WORLD
    torch.manual_seed(0)
    model = Reversed()
    reference = Reversed()
    reference.load_state_dict(model.state_dict())

    def wrapped() -> DistributedDataParallel:
        copy = Reversed()
        copy.load_state_dict(model.state_dict())
        ddp = DistributedDataParallel(copy)
        sum_in_parameter_order(ddp, group)
        return ddp

    running, fresh = wrapped(), wrapped()
    first = step(running, batch(1, env.rank))
    second = step(running, batch(2, env.rank))  # after DDP rebuilt its buckets
    fresh_first = step(fresh, batch(2, env.rank))  # a resumed process's first step on the same batch
    report = {
        "second_equals_fresh_first": all(torch.equal(a, b) for a, b in zip(second, fresh_first)),
        "excess": [excess_over_bound(first, 1, reference, env.world_size),
                   excess_over_bound(second, 2, reference, env.world_size)],
    }
    (out_dir / f"rank{env.rank}.json").write_text(json.dumps(report))
    destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
