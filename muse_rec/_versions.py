"""The pinned stack, in one place. Read by scripts/setup.sh and by the import-time version guard.

This file imports nothing (setup.sh runs it before any package is installed).
"""
from __future__ import annotations

# CPU profile: the set verified in shared/design/STACK.md.
TORCH_VERSION = "2.13.0"
FBGEMM_VERSION = "1.8.0"
TORCHREC_VERSION = "1.8.0"
TORCHX_VERSION = "0.7.0"
TENSORDICT_VERSION = "0.15.3"  # TorchRec's; needs torch >= 2.11 (`cuda_requirements`)

# Each FBGEMM release is built against exactly one torch minor (fbgemm_gpu/__init__.py holds
# the same table); a mismatch fails at import with an undefined symbol. TorchRec releases
# move in lock-step with FBGEMM (torchrec 1.8 <-> fbgemm 1.8).
FBGEMM_TORCH_MINOR = {
    "1.9": "2.14",
    "1.8": "2.13",
    "1.7": "2.12",
    "1.6": "2.11",
    "1.5": "2.10",
    "1.4": "2.9",
}


def minor(version: str) -> str:
    """'2.13.0+cpu' -> '2.13'."""
    parts = version.split("+")[0].split(".")
    return ".".join(parts[:2])


def fbgemm_for_torch(torch_version: str) -> str:
    """The FBGEMM release to install beside a given torch, e.g. '2.11.0' -> '1.6.0'."""
    want = minor(torch_version)
    for fb, tv in FBGEMM_TORCH_MINOR.items():
        if tv == want:
            return f"{fb}.0"
    raise ValueError(
        f"no known FBGEMM release for torch {torch_version}; known pairs: "
        + ", ".join(f"fbgemm {fb} <-> torch {tv}" for fb, tv in FBGEMM_TORCH_MINOR.items())
    )


def cuda_requirements(torch_version: str) -> list:
    """pip requirements of the CUDA profile beside a machine's own torch, e.g. for '2.11.0':
    ['fbgemm-gpu==1.6.0', 'torchrec==1.6.*', 'tensordict==0.15.3'].

    TorchRec is pinned by minor, not to a patch: its patch releases are not FBGEMM's (torchrec
    1.6.1 goes with fbgemm-gpu 1.6.0; there is no torchrec 1.6.0). tensordict 0.15 requires
    torch >= 2.11, so an older torch gets the last release without that floor; otherwise pip
    would replace the machine's CUDA torch with the newest one to satisfy it.
    """
    fb = fbgemm_for_torch(torch_version)
    major, minor_ = (int(x) for x in minor(torch_version).split("."))
    tensordict = f"tensordict=={TENSORDICT_VERSION}" if (major, minor_) >= (2, 11) else "tensordict==0.14.3"
    return [f"fbgemm-gpu=={fb}", f"torchrec=={minor(fb)}.*", tensordict]
