"""The import-time version guard: a mismatched FBGEMM build fails at once with a clear message."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from muse_rec import _versions, env


def _fake_dist(root: Path, name: str, version: str) -> None:
    """A dist-info folder that importlib.metadata finds before the real package."""
    d = root / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _import_beside(fake_root, code: str = "import muse_rec", **env_extra: str) -> subprocess.CompletedProcess:
    """Import muse_rec in a fresh interpreter that sees the fake dist-infos under `fake_root` first."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(fake_root), "PATH": "/usr/bin:/bin", **env_extra},
        capture_output=True,
        text=True,
    )


def test_installed_stack_is_consistent():
    rep = env.inspect_stack()
    assert rep.consistent, rep.problems
    assert _versions.minor(rep.torch) == _versions.FBGEMM_TORCH_MINOR[_versions.minor(next(iter(rep.fbgemm.values())))]


def test_mismatched_fbgemm_fails_at_import_with_versions(tmp_path):
    # fbgemm-gpu-cpu 1.6.0 is built for torch 2.11: importing muse_rec beside torch 2.13 must fail
    # with a message naming what is installed and what to install, not an undefined symbol.
    _fake_dist(tmp_path, "fbgemm-gpu-cpu", "1.6.0")
    proc = _import_beside(tmp_path)
    assert proc.returncode != 0
    err = proc.stderr
    assert "StackMismatchError" in err
    assert "fbgemm-gpu-cpu 1.6.0" in err
    assert "torch 2.13" in err
    assert "built for torch 2.11.x" in err
    assert f"fbgemm-gpu-cpu=={_versions.fbgemm_for_torch(env.inspect_stack().torch)}" in err
    assert "scripts/setup.sh" in err


def test_both_fbgemm_builds_installed_is_reported(tmp_path):
    _fake_dist(tmp_path, "fbgemm-gpu", "1.8.0")
    proc = _import_beside(tmp_path)
    assert proc.returncode != 0
    assert "both fbgemm-gpu and fbgemm-gpu-cpu are installed" in proc.stderr


def test_guard_can_be_bypassed(tmp_path):
    _fake_dist(tmp_path, "fbgemm-gpu-cpu", "1.6.0")
    proc = _import_beside(tmp_path, "import muse_rec; print('imported')", MUSE_REC_SKIP_VERSION_CHECK="1")
    assert proc.returncode == 0, proc.stderr
    assert "imported" in proc.stdout


@pytest.mark.parametrize(
    "torch_v, fb, tr, problem",
    [
        ("2.13.0", {"fbgemm-gpu-cpu": "1.8.0"}, "1.7.0", "torchrec 1.7.0 needs FBGEMM 1.7.x"),
        ("2.12.1", {"fbgemm-gpu": "1.8.0"}, "1.8.0", "fbgemm-gpu 1.8.0 is built for torch 2.13.x"),
        ("2.13.0", {}, "1.8.0", "no FBGEMM build is installed"),
        ("2.13.0", {"fbgemm-gpu-cpu": "0.1.0"}, "1.8.0", "not a release this project knows"),
    ],
)
def test_inspect_stack_names_each_problem(monkeypatch, torch_v, fb, tr, problem):
    versions = {"torch": torch_v, "torchrec": tr, "torchx": "0.7.0", **fb}
    monkeypatch.setattr(env, "_version", lambda d: versions.get(d))
    rep = env.inspect_stack()
    assert not rep.consistent
    assert any(problem in p for p in rep.problems), rep.problems


def test_fbgemm_for_torch_table():
    assert _versions.fbgemm_for_torch("2.11.0+cu130") == "1.6.0"
    assert _versions.fbgemm_for_torch("2.13.0") == "1.8.0"
    with pytest.raises(ValueError, match="no known FBGEMM release"):
        _versions.fbgemm_for_torch("1.13.0")
