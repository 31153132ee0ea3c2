"""`muse-rec info`: versions, device, embedding optimizers and their routes, install consistency."""
from __future__ import annotations

import argparse
import json
import platform

HELP = "print versions, device, supported fused embedding optimizers and whether the install is consistent"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--short", action="store_true", help="one line")


def collect() -> dict:
    from muse_rec.quiet import quiet_known_warnings

    quiet_known_warnings()  # before FBGEMM's import-time notes
    from muse_rec.distributed.sharders import ROW_SPARSE_ADAM, ROW_SPARSE_ADAM_NAMES, sparse_optimizer_route
    from muse_rec.env import fused_optimizers, inspect_stack

    import torch

    rep = inspect_stack()
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    return {
        "python": platform.python_version(),
        "torch": rep.torch,
        "fbgemm": rep.fbgemm,
        "torchrec": rep.torchrec,
        "torchx": rep.torchx,
        "device": dev,
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "cuda_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "backend": "nccl" if cuda else "gloo",
        "fused_embedding_optimizers": fused_optimizers(dev),
        # Optimizers this device runs outside FBGEMM's fused kernels, and how.
        "row_sparse_embedding_optimizers": [n for n in ROW_SPARSE_ADAM_NAMES
                                            if sparse_optimizer_route(n, dev) == ROW_SPARSE_ADAM],
        "consistent": rep.consistent,
        "problems": rep.problems,
    }


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    elif args.short:
        fb = ", ".join(f"{d} {v}" for d, v in info["fbgemm"].items())
        state = "consistent" if info["consistent"] else "INCONSISTENT"
        print(f"torch {info['torch']} | {fb} | torchrec {info['torchrec']} | {info['device']} | {state}")
    else:
        rows = [
            ("python", info["python"]),
            ("torch", info["torch"]),
            ("fbgemm", ", ".join(f"{d} {v}" for d, v in info["fbgemm"].items()) or "missing"),
            ("torchrec", info["torchrec"]),
            ("torchx", info["torchx"]),
            ("device", f"{info['device']} x {info['cuda_devices']} {info['cuda_names']}" if info["cuda_devices"] else "cpu (no CUDA device)"),
            ("process group", info["backend"]),
            ("fused embedding optimizers", ", ".join(info["fused_embedding_optimizers"])),
            ("row-sparse embedding optimizers", ", ".join(info["row_sparse_embedding_optimizers"]) or "none needed"),
            ("install", "consistent" if info["consistent"] else "INCONSISTENT: " + "; ".join(info["problems"])),
        ]
        w = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{w}}  {v}")
        if info["row_sparse_embedding_optimizers"]:
            print(f"note: train.sparse_optimizer.name: adam runs on {info['device']} as RowSparseAdam (FBGEMM has no "
                  "fused CPU Adam): torch SparseAdam's update on the rows each step touched; CUDA uses FBGEMM's fused Adam.")
    return 0 if info["consistent"] else 1
