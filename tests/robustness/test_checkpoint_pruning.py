"""A run still training deletes its older checkpoints; a reader of one (evaluate, export) must either
read it whole or find it gone and read the run's newest. Export failed instead: a pruned shard was
"does not fit this model", a pruned manifest "not written by muse_rec ... refusing to unpickle it"."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from muse_rec.spec import load_spec
from tests.robustness.conftest import SPEC


def _steps(run: Path):
    return sorted((run / "checkpoints").glob("step-*[0-9]"))


def test_export_reads_the_runs_newest_checkpoint_when_its_choice_is_pruned_meanwhile(trained, tmp_path, monkeypatch):
    import muse_rec.serving.export as export
    from muse_rec.training.checkpoint_position import CheckpointError
    from muse_rec.training.run_record import RunError

    runs = trained.copy_run(tmp_path / "runs")
    run = runs / "din"
    spec = load_spec(SPEC, [ov.replace(str(trained.runs), str(runs)) for ov in trained.sets()[1::2]])
    real_load, seen = export.load_checkpoint, []

    def load_while_training(ck, *args, **kwargs):
        seen.append(Path(ck).name)
        if len(seen) == 1:  # the run saves a newer step and prunes the one being read
            step = int(Path(ck).name.split("-")[1])
            Path(ck).rename(Path(ck).parent / f"step-{step + 30:08d}")
            raise CheckpointError(f"{ck}: does not fit this model: FileNotFoundError: {ck}/__0_0.distcp")
        return real_load(ck, *args, **kwargs)

    monkeypatch.setattr(export, "load_checkpoint", load_while_training)
    newest = _steps(run)[-1]
    moved = f"step-{int(newest.name.split('-')[1]) + 30:08d}"
    manifest = export.export_model(spec, str(tmp_path / "exported"))
    assert seen == [newest.name, moved] and Path(str(manifest["checkpoint"])).name == moved

    seen.clear()  # a checkpoint the user named is not swapped for another
    with pytest.raises(RunError, match="deleted while it was read"):
        export.export_model(spec, str(tmp_path / "exported2"), checkpoint=str(_steps(run)[-1]))


def test_a_pruned_checkpoint_leaves_its_name_at_once(tmp_path, monkeypatch):
    """Pruning deleted the step directory file by file under its own name, so a reader could find
    it half gone (no manifest, a shard missing) rather than gone."""
    from muse_rec.training import checkpoint as C

    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        d = root / f"step-{step:08d}"
        d.mkdir(parents=True)
        (d / "position.json").write_text(f'{{"step": {step}, "run_id": "r"}}')
    deleted = []
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(C.shutil, "rmtree", lambda p, *a, **k: (deleted.append(Path(p).name), real_rmtree(p, *a, **k)))
    C._prune(root, keep=2, run_id="r")
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000003"]
    assert "step-00000001" not in deleted and "step-00000001.replaced" in deleted


def test_ctrl_c_during_a_checkpoint_save_takes_effect_once_the_save_is_whole(tmp_path, monkeypatch):
    """Ctrl-C raised KeyboardInterrupt inside DCP's save, which reported it as the save's failure:
    `train` said "checkpoint does not fit this model: KeyboardInterrupt" (exit 2), or torch's zip writer
    aborted the process (exit 134)."""
    import os
    import signal

    import torch

    from muse_rec.training import checkpoint as C
    from muse_rec.training.checkpoint_latest import latest_checkpoint
    from muse_rec.training.checkpoint_position import Position

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

    real_save = C.dcp.save

    def save_interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, mid-save
        return real_save(*args, **kwargs)

    monkeypatch.setattr(C.dcp, "save", save_interrupted)
    root = tmp_path / "checkpoints"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever the runner set
    try:
        with pytest.raises(KeyboardInterrupt):
            C.save_checkpoint(str(root), Tiny(), None, Position(step=1, run_id="r"))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001"]  # whole, under its final name
    assert latest_checkpoint(str(root), run_id="r") == root / "step-00000001"
