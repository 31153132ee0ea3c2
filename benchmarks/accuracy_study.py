"""Accuracy at the paper's published settings: the parametrization ablation and the per-method check.

Two tables (docs/accuracy.md shows them):

* ``ablation``: MUSE at the published settings (batch 1000, dense AdamW 2e-4, one epoch), with
  torch's parametrization ("ours") and each difference to the reference's (MUSE.md) switched
  ON alone, then the whole reference parametrization and the reference with each difference
  switched OFF alone. Which rows move GAUC is which differences decide the learning speed.
* ``methods``: every method's ``<method>.yaml`` of ``--spec-dir`` (default ``specs/demo``; ``specs/methods``
  for the paper's specs as committed), ``din_ref`` included, at the published settings, with 5x the dense
  lr, and with 4x the steps (batch 250: the same one epoch in 4x the steps). The published settings
  are "not limiting" when their GAUC is within ``--tolerance`` of the best of the other two.
  Model-free floors (``muse-rec baselines``) are added when that command exists.

The ID tables of every run train with ``--sparse``'s optimizer, whatever the spec says: ``adagrad`` (the
default) row-wise Adagrad lr 0.05 (the demo profile's), ``adam`` the paper's lr 2e-3, ``profile`` each spec's
own (``specs/demo``: row-wise Adagrad 0.05; ``specs/methods``: the spec default, row-wise Adagrad 0.02).

Every run is ``muse-rec train`` in its own process (OMP_NUM_THREADS=1, ``--jobs`` at a time). All of a study
lives in ``D = OUT/<sparse>[_lr<sparse-lr>][_reference_parametrization]``: each run's directory under
``D/runs``, its log under ``D/logs``; a run whose ``metrics.json`` exists is skipped, so re-running resumes.
Writes ``D/<table>.json`` and ``D/<table>.md`` (and ``D/floors.json`` for ``methods``). Exits 0 when
every run it started finished; else, after the table, one line naming the failed runs' logs and exit status 1
(2 when every failed run refused its input). A spec that cannot be loaded (no ``<method>.yaml`` in
``--spec-dir``, a typo in ``--spec``) is refused before any run, with nothing written.

Example::

    muse-rec synth data/demo/raw --preset demo && muse-rec prepare data/demo/raw data/demo/prepared
    python benchmarks/accuracy_study.py results/accuracy --prepared data/demo/prepared --what ablation
    python benchmarks/accuracy_study.py results/accuracy --prepared data/demo/prepared --what methods
    # the reference code's training recipe (MUSE.md's parametrization + sparse Adam), every method:
    python benchmarks/accuracy_study.py results/accuracy --prepared data/demo/prepared --what methods --parametrization reference --sparse adam
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = ("train.batch_size=1000", "train.dense_optimizer.lr=2.0e-4", "train.epochs=1")
SPARSE = {  # the sparse optimizer of every run of a study (CPU: FBGEMM has no fused Adam)
    "adagrad": ("train.sparse_optimizer.name=exact_row_wise_adagrad", "train.sparse_optimizer.lr=0.05"),
    "adam": ("train.sparse_optimizer.name=adam", "train.sparse_optimizer.lr=2.0e-3"),
    "profile": (),
}
P = "model.parametrization."
# Each difference between torch's parametrization and the reference's: (ours, reference) overrides.
DIFFERENCES: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "linear W ~ N(0,1)/sqrt(fan_in)": ((P + "linear_init=torch",), (P + "linear_init=normal_fan_in",)),
    "linear bias 0.1": ((P + "linear_bias=null",), (P + "linear_bias=0.1",)),
    "attention projections with bias": ((P + "attention_bias=false",), (P + "attention_bias=true",)),
    "Dice g init -0.25": ((P + "dice_alpha_init=0.0",), (P + "dice_alpha_init=-0.25",)),
    "Dice LayerNorm no affine, eps 1e-12": ((P + "dice_norm_affine=true", P + "dice_norm_eps=1.0e-5"),
                                            (P + "dice_norm_affine=false", P + "dice_norm_eps=1.0e-12")),
    "2 logits + Dice + softmax CE": ((P + "output_head=one_logit",), (P + "output_head=two_logits_dice",)),
    "AdamW weight_decay 0.01": (("train.dense_optimizer.weight_decay=0.0",),
                                ("train.dense_optimizer.weight_decay=0.01",)),
}
METHODS = ("muse", "din", "din_ref", "sim_hard", "sim_soft", "twin", "miss")
SETTINGS = {  # name -> overrides on top of PUBLISHED
    "published": (),
    "5x dense lr": ("train.dense_optimizer.lr=1.0e-3",),
    "4x steps (batch 250)": ("train.batch_size=250",),
}


@dataclass
class Config:
    """One row of a table: a spec, its overrides, and where its seeds' runs live."""

    key: str  # file-system safe
    label: str
    spec: str
    overrides: Tuple[str, ...]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


# Ours, in neither torch nor the reference: the output logit starts at the train click rate
# (`output_bias: train_prior`), the tower's Linears after an activation start with He's gain for it
# (`tower_gain: activation`), and every SimTier tier weight starts at U(0, 1)'s RMS instead of a draw
# (`simtier_init: constant`). The ours/reference rows switch all three off, the "spec" rows show them.
# Each: (row-key slug, "ours + ..." label, "the spec - ..." label, the override that switches it off).
BEYOND: Tuple[Tuple[str, str, str, Tuple[str, ...]], ...] = (
    ("train_prior", "output bias = train prior", "train prior (output bias as every Linear)",
     (P + "output_bias=linear",)),
    ("tower_gain", "tower gain = He's for the activation", "tower gain (unit, as the reference)",
     (P + "tower_gain=unit",)),
    ("simtier_init", "SimTier weights start constant (U(0,1)'s RMS)",
     "constant SimTier init (U(0,1) draws, as the reference)", (P + "simtier_init=uniform",)),
)
# Ours too, but an option the spec does not use (docs/accuracy.md): the SCL histograms alone make the
# first tower Linear's fan-in. The ours/reference rows pin LeCun's rule over every column (the spec's
# and the reference's); one "spec +" row switches the option on.
OPTIONS: Tuple[Tuple[str, str, Tuple[str, ...], Tuple[str, ...]], ...] = (
    ("tower_fan_in", "first Linear's fan-in = the SCL histograms (an option)",
     (P + "tower_fan_in=scl_histograms",), (P + "tower_fan_in=all",)),
)
# Every choice of ours (BEYOND and OPTIONS) at the reference's value: the base of the ours/reference rows.
OURS_OFF = (*(o for *_, off in BEYOND for o in off), *(o for *_, off in OPTIONS for o in off))


def _all(which: str, names: Sequence[str] = ()) -> Tuple[str, ...]:
    """Every difference at its ``which`` (0 ours, 1 reference) value, except ``names`` flipped."""
    out: List[str] = list(OURS_OFF)
    for name, pair in DIFFERENCES.items():
        side = int(which == "reference") ^ int(name in names)
        out += pair[side]
    return tuple(out)


def ablation_configs(spec: str) -> List[Config]:
    rows = [Config("ours", "ours (torch defaults)", spec, _all("ours"))]
    rows += [Config("ours_plus_" + _slug(n), f"ours + {n}", spec, _all("ours", [n])) for n in DIFFERENCES]
    rows.append(Config("reference", "reference (all of MUSE.md)", spec, _all("reference")))
    rows += [Config("reference_minus_" + _slug(n), f"reference - {n}", spec, _all("reference", [n]))
             for n in DIFFERENCES]
    # Ours beyond the reference (BEYOND): each switched on alone over ours, and off alone from the spec.
    rows += [Config("ours_plus_" + key, f"ours + {plus}", spec, tuple(o for o in _all("ours") if o not in off))
             for key, plus, _, off in BEYOND]
    rows.append(Config("spec", "the spec as committed (reference - bias 0.1 - 2 logits + train prior + tower gain "
                       "+ constant SimTier init)", spec, ()))
    rows += [Config("spec_minus_" + key, f"the spec - {minus}", spec, off) for key, _, minus, off in BEYOND]
    rows += [Config("spec_plus_" + key, f"the spec + {plus}", spec, on) for key, plus, on, _ in OPTIONS]
    return rows


# `--parametrization`: the committed specs' own, or every knob at the reference's value (MUSE.md,
# no train prior). With `--sparse adam` the second is the reference code's whole training recipe in
# this implementation: the rows to set beside the reference code's own runs (docs/accuracy.md).
PARAMETRIZATIONS = ("spec", "reference")


def method_configs(spec_dir: str, parametrization: str = "spec") -> List[Config]:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
    extra = _all("reference") if parametrization == "reference" else ()
    return [Config(f"{m}__{_slug(s)}", f"{m} | {s}", f"{spec_dir}/{m}.yaml", (*extra, *ov))
            for m in METHODS for s, ov in SETTINGS.items()]


def run_dir(out: Path, cfg: Config, seed: int) -> Path:
    return out / "runs" / f"{cfg.key}-s{seed}"


def run_spec(cfg: Config, seed: int, out: Path, prepared: str, sparse: str,
             sparse_lr: Optional[float]) -> Tuple[str, List[str]]:
    """The spec file and the ``--set`` overrides a run's `muse-rec train` loads (`command`); the checks before
    any run (`other_settings`, `unreadable_spec`) load the same."""
    lr = () if sparse_lr is None else (f"train.sparse_optimizer.lr={sparse_lr}",)
    overrides = [*PUBLISHED, *SPARSE[sparse], *lr, f"data.prepared={prepared}", "data.num_workers=0",
                 "train.eval_batch_size=1000", f"train.seed={seed}", f"output_dir={run_dir(out, cfg, seed)}",
                 "train.checkpoint_every=0", *cfg.overrides]
    return str(REPO / cfg.spec), overrides


def command(cfg: Config, seed: int, out: Path, prepared: str, sparse: str, sparse_lr: Optional[float]) -> List[str]:
    spec, overrides = run_spec(cfg, seed, out, prepared, sparse, sparse_lr)
    cmd = [sys.executable, "-m", "muse_rec.cli", "train", "--spec", spec, "--device", "cpu"]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def read_gauc(path: Path) -> Optional[float]:
    try:
        return float(json.loads((path / "metrics.json").read_text())["gauc"])
    except (OSError, KeyError, ValueError):
        return None


def run_all(jobs: List[Tuple[Config, int]], out: Path, prepared: str, sparse: str, sparse_lr: Optional[float],
            parallel: int) -> List[Tuple[str, int]]:
    """Run every pending (config, seed), ``parallel`` processes at a time; failures are logged, not fatal.

    Returns the failed runs: (their log's name under OUT/logs, the exit status of `muse-rec train`)."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}: no run would start")
    pending = [(c, s) for c, s in jobs if read_gauc(run_dir(out, c, s)) is None]
    print(f"[study] {len(jobs) - len(pending)} runs done, {len(pending)} to go", flush=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    running: List[Tuple[subprocess.Popen, Config, int, float]] = []
    failed: List[Tuple[str, int]] = []
    while pending or running:
        while pending and len(running) < parallel:
            cfg, seed = pending.pop(0)
            rd = run_dir(out, cfg, seed)
            if rd.exists():  # an interrupted run: start it again from scratch
                shutil.rmtree(rd)
            log = open(out / "logs" / f"{cfg.key}-s{seed}.log", "w")
            proc = subprocess.Popen(command(cfg, seed, out, prepared, sparse, sparse_lr), stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd=REPO)
            running.append((proc, cfg, seed, time.time()))
        time.sleep(1.0)
        for item in list(running):
            proc, cfg, seed, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            g = read_gauc(run_dir(out, cfg, seed))
            if g is None:
                failed.append((f"{cfg.key}-s{seed}.log", proc.returncode))
            status = f"GAUC {g:.4f}" if g is not None else f"FAILED rc={proc.returncode} (see logs/{cfg.key}-s{seed}.log)"
            print(f"[study] {cfg.label} seed {seed}: {status} in {time.time() - t0:.0f}s; "
                  f"{len(pending) + len(running)} left", flush=True)
    return failed


def summarize(configs: List[Config], seeds: Sequence[int], out: Path) -> Dict[str, Dict]:
    rows = {}
    for c in configs:
        g = [x for x in (read_gauc(run_dir(out, c, s)) for s in seeds) if x is not None]
        rows[c.key] = {"label": c.label, "spec": c.spec, "overrides": list(c.overrides), "gauc": g,
                       "mean": statistics.fmean(g) if g else None,
                       "std": statistics.stdev(g) if len(g) > 1 else 0.0 if g else None}
    return rows


def _fmt(r: Dict) -> str:
    if r["mean"] is None:
        return "missing"
    n = len(r["gauc"])
    return f"{r['mean']:.4f} ± {r['std']:.4f} (n={n})" if n > 1 else f"{r['mean']:.4f} (n=1)"


def ablation_markdown(rows: Dict[str, Dict]) -> str:
    base, ref = rows["ours"]["mean"], rows["reference"]["mean"]
    lines = ["| parametrization | GAUC mean ± std | Δ vs ours | Δ vs reference |", "|---|---|---|---|"]
    skipped = [r["label"] for r in rows.values() if r["mean"] is None]
    for r in rows.values():
        if r["mean"] is None:
            continue
        d0 = "" if base is None else f"{r['mean'] - base:+.4f}"
        d1 = "" if ref is None else f"{r['mean'] - ref:+.4f}"
        lines.append(f"| {r['label']} | {_fmt(r)} | {d0} | {d1} |")
    if skipped:
        lines += ["", "Not run: " + "; ".join(skipped) + "."]
    return "\n".join(lines) + "\n"


def methods_markdown(rows: Dict[str, Dict], tolerance: float, floors: Optional[Dict[str, float]],
                     asked: Optional[Sequence[str]] = None) -> str:
    """The methods table. ``asked``: the config keys this study ran (``--only``; None = all): a method none of
    whose settings was asked or has a result is listed under "Not run" instead of as a row of "missing"."""
    best_floor = max(floors.values()) if floors else None
    # As given (:g): three decimals printed --tolerance 0.0025 as "within 0.003" and 0.0004 as "within 0.000".
    head = "| method | " + " | ".join(SETTINGS) + f" | published within {tolerance:g} of best? |"
    if best_floor is not None:
        head += f" above best floor ({best_floor:.4f})? |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    not_run = []
    for m in METHODS:
        keys = [f"{m}__{_slug(s)}" for s in SETTINGS]
        cells = [rows[k] for k in keys]
        if asked is not None and all(c["mean"] is None for c in cells) and not set(keys) & set(asked):
            not_run.append(m)
            continue
        pub, others = cells[0]["mean"], [c["mean"] for c in cells[1:] if c["mean"] is not None]
        ok = "" if pub is None or not others else ("yes" if pub >= max(others) - tolerance else
                                                    f"no ({pub - max(others):+.4f})")
        line = f"| {m} | " + " | ".join(_fmt(c) for c in cells) + f" | {ok} |"
        if best_floor is not None:
            line += "  |" if pub is None else (f" yes ({pub - best_floor:+.4f}) |" if pub > best_floor
                                               else f" no ({pub - best_floor:+.4f}) |")
        lines.append(line)
    if not_run:
        lines += ["", "Not run: " + ", ".join(not_run) + "."]
    if floors:
        lines += ["", "| model-free floor (test) | GAUC |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in floors.items()]
    return "\n".join(lines) + "\n"


def model_free_floors(prepared: str, out: Path) -> Optional[Dict[str, float]]:
    """GAUC of each floor of ``muse-rec baselines PREPARED --split test`` (None if that command is absent)."""
    from muse_rec.metrics.floors import FLOORS_VERSION

    path = out / "floors.json"
    if path.exists():
        version = _floors_file_field(path, "version")
        if version != FLOORS_VERSION:  # the floors of older code: another set of floors, or other values
            print(f"[study] {path} holds floors of version {version}, this code's are version {FLOORS_VERSION}: "
                  "computing them again", flush=True)
            path.unlink()
    if not path.exists():
        proc = subprocess.run([sys.executable, "-m", "muse_rec.cli", "baselines", prepared, "--split", "test",
                               "--out", str(path)], capture_output=True, text=True, cwd=REPO,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        if proc.returncode != 0 or not path.exists():
            print(f"[study] no model-free floors: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
            return None
    floors = json.loads(path.read_text())["floors"]
    return {k: float(v["gauc"]) for k, v in floors.items() if v.get("gauc") is not None}


def _floors_file_field(path: Path, key: str) -> object:
    """``key`` of the floors file ``path`` (`muse-rec baselines --out`), None when the file is not JSON."""
    try:
        return json.loads(path.read_text()).get(key)
    except ValueError:
        return None


def _as_run_path(path: str) -> str:
    """A path as the runs and `baselines` read it (cwd = the repository)."""
    return path if "://" in path else os.path.abspath(os.path.join(REPO, path))


def other_data(out: Path, prepared: str) -> Optional[str]:
    """Why ``out`` holds results of other prepared data than ``prepared`` (None when it does not).

    A run whose metrics.json exists is skipped and the floors are read from ``out/floors.json``: in an
    OUT made with another --prepared, the table would show that data's GAUCs and floors as this one's.
    """
    want = _as_run_path(prepared)
    floors = out / "floors.json"
    if floors.exists():
        had = _floors_file_field(floors, "prepared")
        if had is not None and _as_run_path(str(had)) != want:
            return f"{floors}: the floors of {had}, not of --prepared {prepared}"
    import yaml

    for spec in sorted((out / "runs").glob("*/spec.yaml")):
        try:
            had = (yaml.safe_load(spec.read_text()) or {}).get("data", {}).get("prepared")
        except (OSError, ValueError, yaml.YAMLError, AttributeError):
            continue
        if had is not None and _as_run_path(str(had)) != want:
            return f"{spec.parent}: a run on {had}, not on --prepared {prepared}"
    return None


def other_settings(out: Path, configs: Sequence[Config], seeds: Sequence[int], prepared: str, sparse: str,
                   sparse_lr: Optional[float]) -> Optional[str]:
    """Why a finished run under ``out`` is not the run this study makes of its row and seed (None when none is).

    A run whose metrics.json exists is skipped and reported under its row's key, so a run of another --spec
    or --spec-dir in the same OUT (the DIN ablation after MUSE's, `--sparse profile` with specs/methods after
    specs/demo) was shown as this study's. Its spec.yaml's training settings (`training_settings`, the data
    left to `other_data`) are compared with those the row's command resolves to, on the keys both know."""
    import yaml
    from muse_rec.spec import SpecError, load_spec, training_settings

    def settings(resolved: object) -> Dict[str, object]:
        return training_settings(resolved if isinstance(resolved, dict) else {}, leave_out=("data.prepared",))

    for cfg in configs:
        for seed in seeds:
            rd = run_dir(out, cfg, seed)
            if read_gauc(rd) is None:  # not finished: the study trains it again from scratch
                continue
            try:
                had = settings(yaml.safe_load((rd / "spec.yaml").read_text()))
            except (OSError, ValueError, yaml.YAMLError):
                continue
            try:
                # Through YAML, as spec.yaml holds it (a tuple is a list there).
                want = settings(yaml.safe_load(yaml.safe_dump(
                    load_spec(*run_spec(cfg, seed, out, prepared, sparse, sparse_lr)).to_dict())))
            except (OSError, SpecError):  # no such spec: nothing to compare (`unreadable_spec` refuses it)
                continue
            diff = [k for k in had if k in want and had[k] != want[k]]
            if diff:
                return (f"{rd}: a run with {diff[0]} = {had[diff[0]]!r}, where this study's {cfg.key} has "
                        f"{want[diff[0]]!r} (another --spec, --spec-dir or version of the specs)")
    return None


def unprepared(prepared: str) -> Optional[str]:
    """Why ``prepared`` holds no prepared data a run can read (None when it does): every run of the study
    reads it, and each would otherwise start, fail on it in turn and leave a table of "missing"."""
    from muse_rec.data.prepared import PreparedData, PreparedDataError

    try:
        PreparedData(prepared)
    except PreparedDataError as e:
        return str(e)
    return None


def unreadable_spec(configs: Sequence[Config], out: Path, prepared: str, sparse: str,
                    sparse_lr: Optional[float]) -> Optional[str]:
    """Why a spec some of ``configs`` train cannot be loaded with the study's settings (None when every one
    can): a missing ``<method>.yaml`` in ``--spec-dir``, a typo in ``--spec`` or a malformed spec otherwise
    started every run of the study, each refusing it in turn, and left OUT with a table of "missing"."""
    from muse_rec.spec import SpecError, load_spec

    for cfg in configs:  # with its runs' overrides (any seed: only train.seed and output_dir differ; ~ms each)
        try:
            load_spec(*run_spec(cfg, 0, out, prepared, sparse, sparse_lr))
        except SpecError as e:
            return str(e)
    return None


def _bad(message: str) -> int:
    """Bad input: one line on stderr, exit status 2 (no traceback)."""
    print(f"accuracy_study.py: {message}", file=sys.stderr)
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--prepared", required=True, help="output of `muse-rec prepare` (e.g. of --preset demo)")
    ap.add_argument("--what", choices=("ablation", "methods"), required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at a time (1 thread each)")
    ap.add_argument("--sparse", choices=tuple(SPARSE), default="adagrad",
                    help="sparse optimizer of every run: adagrad (row-wise, lr 0.05), adam (lr 2e-3), "
                         "profile (each spec's own: specs/demo row-wise Adagrad 0.05, specs/methods 0.02)")
    ap.add_argument("--sparse-lr", type=float, default=None, help="override the sparse optimizer's lr")
    ap.add_argument("--spec", default="specs/demo/muse.yaml", help="ablation: the MUSE spec to ablate")
    ap.add_argument("--spec-dir", default="specs/demo", help="methods: where <method>.yaml live")
    ap.add_argument("--parametrization", choices=PARAMETRIZATIONS, default="spec",
                    help="methods: the specs' parametrization, or the reference's (all of MUSE.md, no train prior)")
    ap.add_argument("--only", default="", help="comma-separated config keys to run (default all)")
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        return _bad(f"--seeds must be comma-separated integers (e.g. 0,1,2), got {args.seeds!r}")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        return _bad(f"--seeds must be distinct non-negative integers, got {args.seeds!r}")
    if args.jobs < 1:  # no run would ever start: the scheduler waited forever
        return _bad(f"--jobs must be >= 1, got {args.jobs}")
    if args.sparse_lr is not None and not 0.0 < args.sparse_lr < math.inf:
        # every run would start and refuse it in turn (exit 2), under an OUT/adagrad_lr-1 of "missing"
        return _bad(f"--sparse-lr must be a finite learning rate > 0, got {args.sparse_lr}")
    if not 0.0 <= args.tolerance < math.inf:  # -1 judged every method "no", nan too, inf every one "yes"
        return _bad(f"--tolerance must be a finite GAUC difference >= 0 (e.g. 0.005), got {args.tolerance}")
    # Every run and `baselines` run with cwd = the repository: a relative OUT or --prepared (the
    # caller's cwd) would have put the runs under the repository and pointed them at other data.
    args.out = Path(os.path.abspath(args.out))
    if "://" not in args.prepared:
        args.prepared = os.path.abspath(args.prepared)
    out = args.out / (args.sparse + ("" if args.sparse_lr is None else f"_lr{args.sparse_lr:g}")
                      + ("" if args.parametrization == "spec" else f"_{args.parametrization}_parametrization"))
    if args.report_only and not (out / "runs").is_dir():
        # Each --sparse / --sparse-lr / --parametrization has its own sub-directory of OUT.
        there = sorted(p.name for p in args.out.glob("*") if (p / "runs").is_dir())
        return _bad(f"--report-only: {out} holds no runs to report (its --sparse, --sparse-lr and --parametrization "
                    f"pick the sub-directory of OUT; OUT has runs in: {', '.join(there) or 'none'})")
    stale = other_data(out, args.prepared)
    if stale:
        return _bad(f"{stale}; one OUT holds the study of one prepared data set: pass another OUT")
    configs = (ablation_configs(args.spec) if args.what == "ablation"
               else method_configs(args.spec_dir, args.parametrization))
    only = [k for k in args.only.split(",") if k]
    unknown = [k for k in only if k not in {c.key for c in configs}]
    if unknown:  # a typo would otherwise run nothing and print a table of "missing"
        return _bad(f"--only: unknown key(s) {', '.join(unknown)}; the keys of --what {args.what}: "
                    + ", ".join(c.key for c in configs))
    other = other_settings(out, configs, seeds, args.prepared, args.sparse, args.sparse_lr)
    if other:
        return _bad(f"{other}; one OUT holds the runs of one study: pass another OUT")
    todo = [c for c in configs if not only or c.key in only]
    if not args.report_only:
        why = unprepared(args.prepared)
        if why:
            return _bad(f"--prepared: {why}")
        why = unreadable_spec(todo, out, args.prepared, args.sparse, args.sparse_lr)
        if why:
            return _bad(f"{'--spec' if args.what == 'ablation' else '--spec-dir'}: {why}")
        try:  # OUT (or a folder above it) a file was a NotADirectoryError traceback from the scheduler
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return _bad(f"OUT {args.out}: cannot make {out} ({e.strerror}: {e.filename})")
        # Seed-major, the first config's method (MUSE) before the others: partial results are a table.
        jobs = sorted(((c, s) for s in seeds for c in todo), key=lambda j: j[0].spec != todo[0].spec)
        failed = run_all(jobs, out, args.prepared, args.sparse, args.sparse_lr, args.jobs)
    else:
        failed = []
    rows = summarize(configs, seeds, out)
    (out / f"{args.what}.json").write_text(json.dumps({"seeds": seeds, "sparse": args.sparse, "sparse_lr": args.sparse_lr,
                                                       "published": PUBLISHED, "rows": rows}, indent=1))
    if args.what == "ablation":
        md = ablation_markdown(rows)
    else:
        md = methods_markdown(rows, args.tolerance, model_free_floors(args.prepared, out), [c.key for c in todo])
    (out / f"{args.what}.md").write_text(md)
    print(md)
    if failed:  # the table shows them as "missing"; the study did not do what was asked
        print(f"accuracy_study.py: {len(failed)} run(s) failed (exit status; logs in {out / 'logs'}): "
              + ", ".join(f"{log} ({rc})" for log, rc in failed), file=sys.stderr)
        # every run refused its input (exit 2: e.g. no spec in --spec-dir): the study's input is bad
        return 2 if all(rc == 2 for _, rc in failed) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
