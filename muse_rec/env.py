"""The installed stack: the import-time version guard and the facts `muse-rec info` prints.

The guard reads package metadata only (`importlib.metadata`); it never imports `fbgemm_gpu`,
because a mismatched FBGEMM build is exactly what crashes on import.
"""
from __future__ import annotations

import importlib.metadata as md
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from muse_rec import _versions

FBGEMM_DISTS = ("fbgemm-gpu-cpu", "fbgemm-gpu")


class StackMismatchError(ImportError):
    """torch, FBGEMM and TorchRec are not a matching set."""


@dataclass
class StackReport:
    torch: Optional[str]
    fbgemm: Dict[str, str]  # distribution name -> version
    torchrec: Optional[str]
    torchx: Optional[str]
    problems: List[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems


def _version(dist: str) -> Optional[str]:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def inspect_stack() -> StackReport:
    """Read the installed versions and list every inconsistency (empty list = a matching set)."""
    torch_v = _version("torch")
    fbgemm = {d: v for d in FBGEMM_DISTS if (v := _version(d)) is not None}
    report = StackReport(torch_v, fbgemm, _version("torchrec"), _version("torchx"))
    p = report.problems
    fix = "run scripts/setup.sh (CPU) or see README 'CUDA' for the matching set"
    if torch_v is None:
        p.append(f"torch is not installed; {fix}")
        return report
    if not fbgemm:
        p.append(
            f"no FBGEMM build is installed; for torch {torch_v} install "
            f"fbgemm-gpu-cpu=={_fbgemm_or_unknown(torch_v)} (CPU) or "
            f"fbgemm-gpu=={_fbgemm_or_unknown(torch_v)} (CUDA)"
        )
    if len(fbgemm) > 1:
        p.append(
            "both fbgemm-gpu and fbgemm-gpu-cpu are installed ("
            + ", ".join(f"{d} {v}" for d, v in fbgemm.items())
            + "); they overwrite the same fbgemm_gpu/ folder. Uninstall both and reinstall one; "
            "installing torchrec without --no-deps pulls in the CUDA fbgemm-gpu"
        )
    for dist, fv in fbgemm.items():
        want_torch = _versions.FBGEMM_TORCH_MINOR.get(_versions.minor(fv))
        if want_torch is None:
            p.append(f"{dist} {fv} is not a release this project knows ({fix})")
        elif want_torch != _versions.minor(torch_v):
            p.append(
                f"{dist} {fv} is built for torch {want_torch}.x but torch {torch_v} is installed: "
                f"install {dist}=={_fbgemm_or_unknown(torch_v)} for this torch, or "
                f"torch=={want_torch}.* for this FBGEMM"
            )
    if report.torchrec is None:
        p.append(f"torchrec is not installed; {fix}")
    else:
        for dist, fv in fbgemm.items():
            if _versions.minor(report.torchrec) != _versions.minor(fv):
                p.append(
                    f"torchrec {report.torchrec} needs FBGEMM {_versions.minor(report.torchrec)}.x "
                    f"but {dist} {fv} is installed"
                )
    return report


def _fbgemm_or_unknown(torch_version: str) -> str:
    try:
        return _versions.fbgemm_for_torch(torch_version)
    except ValueError:
        return "<none known>"


def check_stack() -> None:
    """Raise `StackMismatchError` naming installed and wanted versions, unless they match."""
    if os.environ.get("MUSE_REC_SKIP_VERSION_CHECK") == "1":
        return
    report = inspect_stack()
    if report.consistent:
        return
    installed = ", ".join(
        [f"torch {report.torch}"]
        + [f"{d} {v}" for d, v in report.fbgemm.items()]
        + [f"torchrec {report.torchrec}"]
    )
    raise StackMismatchError(
        "muse_rec: torch / FBGEMM / TorchRec do not match (a mismatch otherwise crashes later "
        "with an undefined symbol inside fbgemm_gpu).\n  installed: "
        + installed
        + "\n  "
        + "\n  ".join(report.problems)
        + f"\n  the verified CPU set: torch=={_versions.TORCH_VERSION} "
        f"fbgemm-gpu-cpu=={_versions.FBGEMM_VERSION} torchrec=={_versions.TORCHREC_VERSION} "
        "(scripts/setup.sh installs it). Set MUSE_REC_SKIP_VERSION_CHECK=1 to bypass this check."
    )


def fused_optimizers(device_type: str) -> List[str]:
    """Fused (in-backward) embedding optimizers FBGEMM supports on this device type.

    On CPU FBGEMM's TBE rejects Adam/LAMB/LARS ("not supported in CPU mode"); CUDA has all.
    """
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    cpu_ok = {"exact_sgd", "exact_adagrad", "exact_row_wise_adagrad", "ema_in_place_row_wise_adagrad"}
    cuda_ok = cpu_ok | {"adam", "partial_row_wise_adam", "lamb", "partial_row_wise_lamb", "lars_sgd"}
    names = sorted(o.value for o in EmbOptimType)
    return [n for n in names if n in (cuda_ok if device_type == "cuda" else cpu_ok)]
