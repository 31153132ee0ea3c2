"""TorchX components of muse_rec.

Run from the repository root (`.torchxconfig` makes local_cwd the default scheduler)::

    torchx run components/train.py:train --profile cpu-demo --spec specs/demo/muse.yaml
    torchx run -s slurm components/train.py:train --profile multi-node

The launch profile (torchx.yaml) fixes nodes x processes, resources and environment; the spec
fixes everything about the run itself.
"""
import torchx.specs as specs
from torchx.components import dist

from muse_rec.launch import get_profile, split_overrides, train_args


def train(
    spec: str = "",
    profile: str = "cpu-demo",
    set: str = "",
    resume: bool = False,
    rdzv_port: int = 0,
    profiles_file: str = "",
) -> specs.AppDef:
    """Train and evaluate one muse_rec spec with DistributedModelParallel on every rank.

    Args:
        spec: the run's spec file (default: the profile's spec)
        profile: launch profile in torchx.yaml (cpu-demo, cpu-single, gpu-node, multi-node)
        set: comma-separated spec overrides, e.g. "train.max_steps=20,model.tower_hidden=[64,32]"
        resume: continue from the run directory's latest checkpoint
        rdzv_port: c10d rendezvous port (0 = the profile's)
        profiles_file: another launch-profiles file instead of torchx.yaml
    """
    # Primitive arguments only (TorchX decodes the command line by the annotations).
    p = get_profile(profile, profiles_file or None)
    overrides = split_overrides(set)
    return dist.ddp(
        *train_args(spec or p.spec, overrides, resume),
        m="muse_rec.cli",
        name="muse-rec-train",
        image=p.image,
        j=p.j,
        cpu=p.cpu,
        gpu=p.gpu,
        memMB=p.memMB,
        env=dict(p.env),
        rdzv_port=rdzv_port or p.rdzv_port,
    )
