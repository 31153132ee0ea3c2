"""TorchRec's sharding-option enumerator, with its options in an order the process's hash seed does not set.

TorchRec's `EmbeddingEnumerator` intersects a table's allowed sharding types and compute kernels
with its constraints as Python sets, so the order it lists a table's options in follows
``PYTHONHASHSEED``, which Python draws afresh for every process. Its proposers sort options by
estimated cost with a stable sort and keep the first of equal-cost plans, so a tie is broken by that
order: `muse-rec plan` printed ``table_wise`` for the Taobao-MM user tables in one process and
``table_column_wise`` (the same single shard, the same cost) in the next, and a training job's plan
could differ from the one `muse-rec plan` had shown. Listing the options in a fixed order makes the
plan a function of the model, the topology and the constraints only.
"""
from __future__ import annotations

from typing import Dict, List

from torch import nn
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.types import ShardingOption
from torchrec.distributed.types import ModuleSharder, ShardingType

# Which of two equal-cost sharding types wins: the simplest layout first (a table on one rank before the
# same placement described as one column shard), then the types a reader of the plan meets most often.
SHARDING_TYPE_PREFERENCE: List[str] = [
    ShardingType.TABLE_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.COLUMN_WISE.value,
    ShardingType.TABLE_ROW_WISE.value,
    ShardingType.TABLE_COLUMN_WISE.value,
    ShardingType.GRID_SHARD.value,
    ShardingType.DATA_PARALLEL.value,
]


class OrderedEmbeddingEnumerator(EmbeddingEnumerator):
    """`EmbeddingEnumerator` whose options come per table (in module order), then by
    `SHARDING_TYPE_PREFERENCE`, then by compute kernel name; options equal in all three keep
    TorchRec's order (their shard layouts, enumerated without sets)."""

    def enumerate(self, module: nn.Module, sharders: List[ModuleSharder[nn.Module]]) -> List[ShardingOption]:
        options = super().enumerate(module, sharders)
        table_order: Dict[str, int] = {}
        for option in options:  # module order: TorchRec walks the modules deterministically
            table_order.setdefault(option.fqn, len(table_order))
        rank = {t: i for i, t in enumerate(SHARDING_TYPE_PREFERENCE)}
        return sorted(options, key=lambda o: (table_order[o.fqn], rank.get(o.sharding_type, len(rank)),
                                              str(o.compute_kernel)))
