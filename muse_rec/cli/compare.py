"""`muse-rec compare RUN_DIR...`: the comparison table of finished runs, with seed-to-seed spread.

Runs of the same method and settings with different seeds are grouped: the table shows the mean
and the standard deviation over seeds, so a gap between methods can be read against the noise.
The settings are each run's spec.yaml (the resolved spec it trained with) without its seed and
the keys that do not change what is trained (`muse_rec.spec.training_settings`): runs of one
method that differ in more (another lr, another batch size) are separate rows, labelled by the
keys that differ; two runs with the same settings and seed (a copied run directory, a re-run)
are refused, as they would count as two seeds. The
model-free floors of the runs' data (`muse-rec baselines`) are rows of the same table, marked
``floor:``; methods below the best floor are named. Floors come from ``--floors FILE``, else
from the runs' metrics.json (a run records them when ``train.check_floors`` is on), else they
are computed for the runs' ``data.prepared`` and cached under ``--floors-cache``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from muse_rec.cli.flags import input_file, input_path, nonempty_path
from muse_rec.json_files import read_json_object, refuse_special_file
from muse_rec.metrics.floor_options import floor_standing, lacked, model_reads, sort_by_standing
from muse_rec.metrics.seeds import Stats, pooled_std

HELP = "compare finished runs (metrics.json): mean and seed-to-seed spread per method and settings, margin vs a baseline"


DEFAULT_BASELINE = "DIN"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=input_path, nargs="+", help="run directories (each holding metrics.json)")
    p.add_argument("--baseline", default=None,
                   help=f"method to measure margins against (default {DEFAULT_BASELINE}, when a run has it)")
    # `_written_files`: "next to this path" read as a directory beside it, or as OUT itself, which is never written.
    p.add_argument("--out", type=nonempty_path, default=None, metavar="OUT",
                   help="also write the table and verdicts to OUT.md (Markdown) and the rows, verdicts and floors "
                        "to OUT.json; an extension of OUT is replaced (--out cmp/t.md writes cmp/t.md and cmp/t.json)")
    # One or the other: `--floors F --no-floors` showed none and never read F (a missing F passed unnoticed).
    floors = p.add_mutually_exclusive_group()
    floors.add_argument("--floors", type=input_file, default=None, metavar="FILE",
                        help="model-free floors to show (JSON of `muse-rec baselines --out`); default: the runs' own")
    floors.add_argument("--no-floors", action="store_true", help="do not show the model-free floors")
    p.add_argument("--floors-cache", type=nonempty_path, default=None, metavar="DIR",
                   help="where floors computed here are cached (default: <first run's parent>/.floors)")


# A run directory's spec.yaml and run.json as compare read them (a spec.yaml: None without the file; a run.json:
# {} without it), by the file's resolved path: each is read once, so what compare says of one run comes from
# one version of each file.
RunFiles = Dict[Path, Optional[Dict]]


def load_runs(paths: List[str], files_read: Optional[RunFiles] = None) -> List[Dict]:
    """Each run's metrics.json, checked: a JSON object with a ``method`` name and numeric metrics
    (a run directory from elsewhere is untrusted input); ValueError naming the file and key.
    ``files_read`` keeps the spec.yaml and run.json files read here (`_spec_doc`, `_run_record`) for the floors
    to read the same."""
    files_read = {} if files_read is None else files_read
    from muse_rec.metrics.report import read_run_metrics

    runs: List[Dict] = []
    seen: Dict[Path, str] = {}
    models: Dict[Path, str] = {}
    configs: Dict[str, str] = {}
    settings: List[Optional[Dict]] = []
    splits: Dict[str, str] = {}
    datasets: Dict[str, str] = {}  # data fingerprint -> the first run that scored that prepared data
    extents: Dict[int, str] = {}  # batches per rank scored (0 = the whole split) -> the first entry that did
    for p in paths:
        f = Path(p) / "metrics.json"
        if Path(p).exists() and not Path(p).is_dir():  # its metrics.json is missing too, but no run can hold one
            raise ValueError(f"{p}: is a file, not a run directory (give the directory holding the run's metrics.json)")
        if not Path(p).exists():  # a typo: there is no run to finish or to evaluate
            raise FileNotFoundError(f"{f}: no metrics.json: {p} does not exist (give a run directory)")
        if not f.exists():
            raise FileNotFoundError(f"{f}: no metrics.json (did the run finish? evaluate it with `muse-rec train --resume`)")
        if f.resolve() in seen:  # it would count as a second seed of its method, with a spread of 0
            raise ValueError(f"{p}: the same run as {seen[f.resolve()]}, given twice; each run counts once as a seed")
        seen[f.resolve()] = p
        runs.append(read_run_metrics(f))
        scored, trained_in = _scored_model(Path(p), runs[-1], f)
        if scored in models:  # a run and an evaluation of it, or two evaluations: one model, not two seeds
            raise ValueError(f"{p}: scores the same trained model as {models[scored]} ({scored}); each trained "
                             "model counts once as a seed")
        models[scored] = p
        split = runs[-1].get("eval_split")
        if split is not None:
            splits.setdefault(str(split), p)
        fingerprint = _scored_data(Path(p), runs[-1], f, files_read)
        if fingerprint is not None:
            datasets.setdefault(fingerprint, p)
        extents.setdefault(_max_batches(runs[-1], f), p)
        settings.append(_settings_of(trained_in, files_read) if trained_in is not None else None)
        reads = _reads(trained_in, files_read) if trained_in is not None else None
        if reads is not None:  # for `floor_verdict`
            runs[-1]["reads"] = reads
        if settings[-1] is not None and "data.train_split" in settings[-1]:  # for `split_warnings`
            runs[-1]["train_split"] = settings[-1]["data.train_split"]
            runs[-1].setdefault("eval_split", settings[-1].get("data.eval_split"))
        if settings[-1] is not None:  # a copied run directory, or a re-run: not another seed
            key = json.dumps([runs[-1]["method"], settings[-1]], sort_keys=True, default=str)
            if key in configs:
                raise ValueError(f"{p}: the same method, spec, ranks and train.seed ({settings[-1].get('train.seed')}) as "
                                 f"{configs[key]} (a copy or a re-run, not another seed); give each seed's run once")
            configs[key] = p
    if len(splits) > 1:
        shown = ", ".join(f"{where}: {split}" for split, where in splits.items())
        raise ValueError(f"the runs were scored on different splits ({shown}); compare scores of one split")
    if len(datasets) > 1:  # a GAUC on one test set says nothing about a gap to a GAUC on another
        shown = ", ".join(f"{where}: {fp}" for fp, where in datasets.items())
        raise ValueError(f"the runs were scored on different prepared data (data fingerprints {shown}); "
                         "compare runs of one data set")
    if len(extents) > 1:  # a partial evaluation (--max-batches) beside whole-split scores, or another part
        shown = ", ".join(f"{where}: " + (f"the first {n} batch(es) per rank" if n else "the whole split")
                          for n, where in extents.items())
        raise ValueError(f"the runs scored different parts of the split ({shown}); compare scores of the same part")
    for r, label in zip(runs, _setting_labels(runs, settings)):
        if label:
            r["setting"] = label
    return runs


def split_warnings(paths: List[str], runs: List[Dict]) -> List[str]:
    """Warnings about the splits the runs (`load_runs`) trained on: a run scored on the split it trained
    on (its GAUC is no held-out score), and runs trained on different splits (their gaps mix the training
    data with the method; within one method they are separate rows, across methods nothing showed it)."""
    out = []
    leaked = [p for p, r in zip(paths, runs) if r.get("train_split") is not None
              and r.get("train_split") == r.get("eval_split")]
    if leaked:
        out.append(f"{', '.join(leaked)}: trained on the split scored here ({runs[paths.index(leaked[0])]['eval_split']}): "
                   "its GAUC is not a held-out score")
    trained: Dict[str, str] = {}  # train split -> the first run trained on it
    for p, r in zip(paths, runs):
        if r.get("train_split") is not None:
            trained.setdefault(str(r["train_split"]), p)
    if len(trained) > 1:
        shown = ", ".join(f"{where}: {split}" for split, where in trained.items())
        out.append(f"the runs trained on different splits ({shown}): a gap between them is not the methods' alone")
    return out


def _max_batches(metrics: Dict, f: Path) -> int:
    """Batches per rank an evaluation scored (``--max-batches``; 0 = the whole split, as every run)."""
    n = metrics.get("max_batches", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{f}: max_batches: expected an integer >= 0, got {n!r}")
    return n


def _scored_model(path: Path, metrics: Dict, f: Path) -> Tuple[Path, Optional[Path]]:
    """(what identifies the model ``metrics`` score, the run directory that trained it or None).

    A run directory scores its own model. An evaluation (`muse-rec evaluate --out`) names its
    checkpoint: the model is that checkpoint's run (``RUN/checkpoints/step-N``; any step of one run is
    one seed), whose spec.yaml gives its settings, else the checkpoint itself.
    ValueError naming the file and key."""
    if "checkpoint" not in metrics:
        return path.resolve(), path
    ck = metrics["checkpoint"]
    if not isinstance(ck, str) or not ck:
        raise ValueError(f"{f}: checkpoint: expected the evaluated checkpoint's path, got {ck!r}")
    ck_path = Path(ck).resolve()  # older evaluations recorded it as given: relative to where compare runs
    run = ck_path.parent.parent
    if ck_path.parent.name == "checkpoints" and (run / "spec.yaml").exists():
        return run, run
    return ck_path, None


def _scored_data(path: Path, metrics: Dict, f: Path, files_read: RunFiles) -> Optional[str]:
    """The fingerprint of the prepared data ``metrics`` scored: its ``data_fingerprint``, else (a run
    directory from before it was recorded there) its run.json's, the data the run trained and was
    evaluated on; None when unknown (an older evaluation, a hand-written metrics.json).
    ValueError naming the file and key."""
    fingerprint = metrics.get("data_fingerprint")
    if fingerprint is None and "checkpoint" not in metrics:
        fingerprint, f = _run_record(path / "run.json", files_read).get("data_fingerprint"), path / "run.json"
    if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
        raise ValueError(f"{f}: data_fingerprint: expected the prepared data's fingerprint, got {fingerprint!r}")
    return fingerprint


def _spec_doc(run_dir: Path, files_read: RunFiles) -> Optional[Dict]:
    """A run directory's spec.yaml, read once per compare (kept in ``files_read``): the settings a run is
    grouped by and the data its floors are computed for came from two reads of it, so a spec.yaml
    replaced in between (a run started again in that directory) grouped the run as one spec and
    judged it by the floors of another's data. None without the file; ValueError naming the file
    when it is not a spec."""
    import yaml

    f = run_dir / "spec.yaml"
    key = f.resolve()
    if key not in files_read:
        doc = _read_document(f, yaml.safe_load, (yaml.YAMLError,), "YAML") if f.exists() else None
        if doc is not None and not isinstance(doc, dict):
            raise ValueError(f"{f}: expected the run's resolved spec (a mapping), got {type(doc).__name__}")
        files_read[key] = doc
    return files_read[key]


def _settings_of(run_dir: Path, files_read: RunFiles) -> Optional[Dict]:
    """The training settings of a run directory's spec.yaml (`_spec_doc`, with its seed) and, from its
    run.json, the number of ranks it trained on (``world_size``: N ranks of train.batch_size step N
    times as few times, so 1 and 2 ranks are two settings, not a run and its copy). None without a
    spec.yaml (e.g. a metrics.json written by hand); ValueError naming the file if it is not a spec."""
    from muse_rec.spec import training_settings

    doc = _spec_doc(run_dir, files_read)
    if doc is None:
        return None
    settings = training_settings(doc)
    world_size = _world_size_of(run_dir / "run.json", files_read)
    if world_size is not None:
        settings["world_size"] = world_size
    return settings


def _reads(run_dir: Path, files_read: RunFiles) -> Optional[List[str]]:
    """What the model a run directory trained reads of the floors' inputs (`floor_options.model_reads`: SCL
    vectors, the long-term history), sorted, from its spec.yaml (the resolved spec, `_spec_doc`: the same read
    as its settings); None when that is unknown (no spec.yaml, one without a ``model`` section, or one that is
    not a valid spec: a hand-written metrics.json, a spec of another version)."""
    from muse_rec.spec import SpecError, from_dict

    doc = _spec_doc(run_dir, files_read)
    if doc is None or not isinstance(doc.get("model"), dict):
        return None
    try:
        return sorted(model_reads(from_dict(doc, source=str(run_dir / "spec.yaml")).model))
    except SpecError:
        return None


def _read_document(path: Path, parse: Callable[[str], Any], errors: Tuple[type, ...], kind: str) -> Any:
    """`parse` of a run's text file; ValueError naming the file when it cannot be read (a directory in its
    place was an IsADirectoryError traceback), is not valid `kind` or not UTF-8."""
    refuse_special_file(path)  # a FIFO there blocked compare forever
    try:
        return parse(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    # ValueError: not UTF-8, or a value the parser cannot convert (an integer past Python's 4,300-digit bound, a
    # YAML date 2026-13-01)
    except (*errors, ValueError) as e:
        raise ValueError(f"{path}: not valid {kind} ({' '.join(str(e).split())})") from None


def _world_size_of(run_json: Path, files_read: RunFiles) -> Optional[int]:
    """``world_size`` of a run's run.json (the ranks its last session trained on), None without
    the file or the key (older runs); ValueError naming the file when it is not a positive integer."""
    doc = _run_record(run_json, files_read)
    if "world_size" not in doc:
        return None
    n = doc["world_size"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{run_json}: world_size: expected a positive integer, got {n!r}")
    return n


def _run_record(run_json: Path, files_read: RunFiles) -> Dict:
    """A run's run.json as a mapping, read once per compare (kept in ``files_read``: the data fingerprint and
    the ranks of an older run came from two reads, so a run.json replaced in between mixed two runs'
    records); empty without the file (a hand-written run) or when it is not a JSON object; ValueError
    naming the file when it cannot be read or parsed."""
    key = run_json.resolve()
    if key not in files_read:
        doc = _read_document(run_json, json.loads, (), "JSON") if run_json.exists() else {}
        files_read[key] = doc if isinstance(doc, dict) else {}
    return files_read[key] or {}


def _setting_labels(runs: List[Dict], settings: List[Optional[Dict]]) -> List[str]:
    """Per run, "" when every run of its method has the same settings (seeds aside); otherwise
    the keys in which its method's runs differ, with this run's values ("no spec.yaml" without one)."""
    labels = [""] * len(runs)
    for method in dict.fromkeys(r["method"] for r in runs):
        idx = [i for i, r in enumerate(runs) if r["method"] == method]
        unseeded = [None if settings[i] is None else {k: v for k, v in settings[i].items() if k != "train.seed"}
                    for i in idx]
        if len({json.dumps(u, sort_keys=True, default=str) for u in unseeded}) < 2:
            continue
        known = [u for u in unseeded if u is not None]
        keys = sorted({k for u in known for k in u})
        differ = [k for k in keys if len({json.dumps(u.get(k, "<absent>"), default=str) for u in known}) > 1]
        def label(u: Optional[Dict], shown: int) -> str:
            if u is None:
                return "no spec.yaml"
            text = ", ".join(f"{k}={_value(u.get(k, '<absent>'))}" for k in differ[:shown]) or "with spec.yaml"
            return text + (f", ... ({len(differ)} keys differ)" if len(differ) > shown else "")

        # Rows are grouped by label: show every differing key when the first three would merge two settings.
        distinct = {json.dumps(u, sort_keys=True, default=str): u for u in unseeded}.values()
        shown = 3 if len({label(u, 3) for u in distinct}) == len(distinct) else len(differ)
        for i, u in zip(idx, unseeded):
            labels[i] = label(u, shown)
    return labels


def _name(row: Dict) -> str:
    """A table row's method, with its setting when its method has several."""
    return f"{row['method']} [{row['setting']}]" if row.get("setting") else row["method"]


def _value(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def baseline_method(runs: List[Dict], asked: Optional[str]) -> str:
    """The method margins are measured against: ``asked`` (ValueError when no run has it), else the default."""
    if asked is None:
        return DEFAULT_BASELINE
    methods = sorted({r["method"] for r in runs})
    if asked.lower() not in {m.lower() for m in methods}:
        raise ValueError(f"--baseline {asked!r}: no run of that method (the runs': {', '.join(methods)})")
    return asked


def runs_of_row(runs: List[Dict], row: Dict) -> List[Dict]:
    """The runs of one table row: its method and setting."""
    return [r for r in runs if r["method"] == row["method"] and r.get("setting", "") == row.get("setting", "")]


def metric_stats(runs: List[Dict], row: Dict, key: str) -> Stats:
    """``key`` (gauc, auc, ...) over the seeds of one table row's runs (`runs_of_row`); a run whose value is
    undefined (null) adds no sample to it."""
    return Stats([r[key] for r in runs_of_row(runs, row) if r.get(key) is not None])


def summarise(runs: List[Dict], baseline: str) -> List[Dict]:
    """One row per method and setting (`load_runs`): seeds, mean and sample std (over seeds,
    `muse_rec.metrics.seeds.Stats`) of each metric, margin vs baseline (its first setting, when it has
    several)."""
    from muse_rec.metrics.report import METRICS

    rows = []
    for method, setting in dict.fromkeys((r["method"], r.get("setting", "")) for r in runs):
        row: Dict = {"method": method, **({"setting": setting} if setting else {})}
        mine = runs_of_row(runs, row)
        row["seeds"] = metric_stats(mine, row, "gauc").n  # seeds that measured the GAUC
        for k in METRICS:
            s = metric_stats(mine, row, k)
            if s.n:
                row[k] = s.mean
                if k in ("gauc", "auc", "logloss"):
                    row[f"{k}_std"] = s.std
        reads = {None if r.get("reads") is None else tuple(r["reads"]) for r in mine}
        if len(reads) == 1 and None not in reads:  # known for every run of the row (`floor_verdict`)
            row["reads"] = list(reads.pop())
        rows.append(row)
    base = next((r for r in rows if r["method"].lower() == baseline.lower()), None)
    for r in rows:
        if base is not None and "gauc" in r and "gauc" in base:
            r["gauc_vs_" + base["method"]] = r["gauc"] - base["gauc"]
    return rows


def _floor_setting(run: str, metrics: Dict, files_read: RunFiles) -> Tuple[Path, Tuple[str, str, int, str]]:
    """(the file that says, (prepared data, eval split, seq_len, train split)): what a run's floors are of,
    from its spec.yaml (`_spec_doc`: as `load_runs` read it), or for an evaluation (no spec.yaml) from the
    ``data`` its metrics.json records. FileNotFoundError where neither says; ValueError naming the file
    where it does not say."""
    where, doc = Path(run) / "spec.yaml", _spec_doc(Path(run), files_read)
    if doc is None and "data" in metrics:  # `muse-rec evaluate` records the data it scored
        where, doc = Path(run) / "metrics.json", metrics
    elif doc is None:
        raise FileNotFoundError(f"{where} not found, so the runs' data is unknown (pass --floors FILE)")
    try:
        d = doc["data"]
        return where, (str(d["prepared"]), str(d.get("eval_split", "test")), int(d.get("seq_len", 0)),
                       str(d.get("train_split", "train")))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{where}: {type(e).__name__}: {e}") from None


_OTHER_FLOORS = "so no one floor judges them all; compare runs of one data set, or pass --floors FILE"


def _floors_of_runs(paths: List[str], runs: List[Dict], cache: Optional[str],
                    files_read: RunFiles) -> Tuple[Optional[Dict], str]:
    """``({name: {description, gauc, auc, logloss}}, where from)`` for the runs, or ``(None, why not)``."""
    recorded = [r["floors"] for r in runs if r.get("floors")]
    if recorded and any(f != recorded[0] for f in recorded):
        # One run's floors would judge the others by another data set's: a run above its own floor was
        # called BELOW the first run's. No verdict beats a wrong one; each run's log has its own.
        return None, f"the runs recorded different floors (other data, split or seq_len), {_OTHER_FLOORS}"
    if len(recorded) == len(runs):
        return recorded[0], "recorded by the runs"
    partial = next((p for p, r in zip(paths, runs) if r.get("max_batches")), None)
    if partial is not None:  # floors are of the whole split
        return None, f"{partial} scored only part of the split (--max-batches); the floors are of the whole split"
    from muse_rec.data.prepared import PreparedData, PreparedDataError
    from muse_rec.metrics.floors import FloorsError, floors_of_run, run_floors_cache

    # A run recorded none (train.check_floors false, or an evaluation): the floors are computed, for every
    # run's data at once; the first run's alone judged runs of other data, split or seq_len (the verdict then
    # depended on the order the runs were given in).
    settings: Dict[Path, Tuple[str, str, int, str]] = {}
    for path, metrics in zip(paths, runs):
        try:
            where, setting = _floor_setting(path, metrics, files_read)
        except FileNotFoundError as e:
            return None, str(e)
        except ValueError as e:
            return None, f"cannot compute them, the data is not known: {e}"
        settings[where] = setting
    if len(set(settings.values())) > 1:
        return None, (f"the runs are of different data, split or seq_len (their spec.yaml, or the data an evaluation "
                      f"recorded), {_OTHER_FLOORS}")
    where, (prepared, split, seq_len, train_split) = next(iter(settings.items()))
    try:
        result = floors_of_run(PreparedData(prepared), split, seq_len,
                               cache or run_floors_cache(str(Path(paths[0]).resolve())), train_split)
    except (PreparedDataError, FloorsError, FileNotFoundError, ValueError) as e:
        return None, f"cannot compute them for {where}'s data: {type(e).__name__}: {e}"
    return result["floors"], f"computed for {prepared} ({split})"


def load_floors(path: str, paths: Sequence[str] = (), runs: Sequence[Dict] = ()) -> Dict:
    """The ``floors`` of a `muse-rec baselines --out` file (or of a run's metrics.json), checked to be of
    the split the runs ``runs`` (from ``paths``) scored: ValueError naming the file otherwise."""
    from muse_rec.metrics.report import check_floors

    f = Path(path)
    if not f.exists():
        raise FileNotFoundError(f"--floors {f}: no such file (write one with `muse-rec baselines PREPARED --out FILE`)")
    # A directory, an unreadable or non-UTF-8 file: one line naming the flag (was a traceback / a bare codec error).
    try:
        doc = read_json_object(f)
    except ValueError as e:  # "<file>: cannot read (...)" / "<file>: not valid JSON (...)"
        raise ValueError(f"--floors {e}: not a floors file of `muse-rec baselines --out`") from None
    if "floors" not in doc:
        raise ValueError(f"--floors {f}: not a floors file of `muse-rec baselines --out` (no 'floors' entry)")
    _check_floors_split(f, doc, paths, runs)
    try:
        return check_floors(doc["floors"], f"--floors {f}")
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"--floors {f}: not a floors file of `muse-rec baselines --out` ({type(e).__name__}: {e})")


def _check_floors_split(f: Path, doc: Dict, paths: Sequence[str], runs: Sequence[Dict]) -> None:
    """Floors judge only the split they were computed on: ValueError naming the first run that scored
    another split, or, scoring the whole split, another number of samples (other prepared data), whose
    verdict they would decide. Keys a file lacks (another writer's) are not compared."""
    split, samples = doc.get("split", doc.get("eval_split")), doc.get("samples")
    for p, r in zip(paths, runs):
        other_split = split is not None and r.get("eval_split") is not None and r["eval_split"] != split
        whole = _max_batches(r, Path(p) / "metrics.json") == 0  # a partial evaluation scores fewer by design
        other_count = (whole and isinstance(samples, int) and isinstance(r.get("samples"), int)
                       and r["samples"] != samples)
        if other_split or other_count:
            where = f" of {doc['prepared']}" if isinstance(doc.get("prepared"), str) else ""
            count = f" ({samples:,} samples)" if isinstance(samples, int) else ""
            scored = f"{r['samples']:,} samples" if isinstance(r.get("samples"), int) else "samples"
            raise ValueError(f"--floors {f}: floors of split {split!r}{where}{count}, but {p} scored {scored} of "
                             f"split {r.get('eval_split')!r}: they would judge it by "
                             "other data; pass the floors of the runs' data (`muse-rec baselines PREPARED --out FILE`) "
                             "or leave --floors out")


def floor_rows(floors: Dict, base: Optional[Dict]) -> List[Dict]:
    """One table row per floor, marked ``floor:``; margin vs the baseline method like the models."""
    rows = []
    for name, f in floors.items():
        row = {"method": f"floor: {f.get('description', name)}", "gauc": f.get("gauc"), "auc": f.get("auc"),
               "logloss": f.get("logloss")}
        if base is not None and "gauc" in base and f.get("gauc") is not None:
            row["gauc_vs_" + base["method"]] = f["gauc"] - base["gauc"]
        rows.append(row)
    return rows


def floor_verdict(model_rows: List[Dict], floors: Dict) -> str:
    """Which methods are below the best floor (by mean GAUC over seeds). A row whose model is known not to read
    what that floor reads (``reads``, from its runs' spec.yaml: SCL vectors, the long-term history) and is at or
    above the best floor it can see is named apart: its training is not in doubt (`floor_options.floor_standing`,
    the rule of a run's own line, `muse_rec.metrics.floors.below_floor_message`)."""
    measured = [k for k in floors if floors[k].get("gauc") is not None]
    if not measured:
        return "model-free floors: none has a GAUC"
    name = max(measured, key=lambda k: floors[k]["gauc"])
    best = floors[name]
    head = f"best model-free floor: {best.get('description', name)} GAUC {best['gauc']:.4f}"
    standings = [(r, floor_standing(r["gauc"], name, best["gauc"], floors,
                                    None if r.get("reads") is None else frozenset(r["reads"])))
                 for r in model_rows if "gauc" in r]
    doubted, blind = sort_by_standing(standings)
    if not doubted and not blind:
        return f"{head}; every method is above it"
    parts = []
    if doubted:
        text = (f"BELOW it: {_listed([r for r, _ in doubted])} - check the learning rates, the number of steps "
                "and the data")
        hint = next((s for _, s in doubted if s.visible_best is not None), None)
        if hint is not None:  # DIN below a floor of SCL cosines may only lack the vectors, not training
            seen_name, seen = hint.visible_best
            lack, them, _ = lacked(hint.lacks)
            text += (f" (a model that does not read {lack}, as DIN, cannot see what that floor reads: the best "
                     f"floor without {them} is {seen.get('description', seen_name)} GAUC {seen['gauc']:.4f})")
        parts.append(text)
    for (lacks, _), group in blind.items():
        seen_name, seen = group[0][1].visible_best
        lack, them, carry = lacked(lacks)
        one = len(group) == 1
        parts.append(f"below it only for want of {lack}: {_listed([r for r, _ in group])}, "
                     f"{'which does not read' if one else 'which do not read'} {them} and "
                     f"{'is' if one else 'are'} above the best floor without {them}, "
                     f"{seen.get('description', seen_name)} GAUC {seen['gauc']:.4f}: {lack} "
                     f"{carry} signal {'it' if one else 'they'} cannot see")
    return f"{head}; " + "; ".join(parts)


def _listed(rows: List[Dict]) -> str:
    """``"DIN (0.6100), MUSE (0.6000)"``: the rows' names with their mean GAUC."""
    return ", ".join(f"{_name(r)} ({r['gauc']:.4f})" for r in rows)


def _written_files(out: str) -> Tuple[Path, Path]:
    """The table (Markdown) and JSON files ``--out OUT`` writes, next to OUT."""
    return Path(out).with_suffix(".md"), Path(out).with_suffix(".json")


def run(args: argparse.Namespace) -> int:
    from muse_rec.data.files import replace_texts
    from muse_rec.output_paths import check_not_an_input, check_output_path
    from muse_rec.metrics import metrics_table
    from muse_rec.metrics.report import metrics_json_text

    try:
        if args.out:
            args.out = check_output_path(args.out, "--out", directory=False)
            for written in _written_files(args.out):
                check_not_an_input(str(written), "--out", {"--floors": args.floors})
        files_read: RunFiles = {}
        runs = load_runs(args.runs, files_read)
        if args.floors_cache and not (args.no_floors or args.floors):
            from muse_rec.metrics.floors import is_cache_file

            # An output directory like any other: it was created and written inside prepared data or a
            # run (artifacts nothing else may be written into), and a file there was a traceback.
            args.floors_cache = check_output_path(args.floors_cache, "--floors-cache", replaces=is_cache_file)
        baseline = baseline_method(runs, args.baseline)
        floors, source = (None, "--no-floors") if args.no_floors else (
            (load_floors(args.floors, args.runs, runs), args.floors) if args.floors else
            _floors_of_runs(args.runs, runs, args.floors_cache, files_read))
    except (FileNotFoundError, ValueError) as e:  # OutputPathError is a ValueError
        print(f"muse-rec compare: {e}", file=sys.stderr)
        return 2
    for warning in split_warnings(args.runs, runs):
        print(f"muse-rec compare: WARNING: {warning}", file=sys.stderr)
    if floors is None and not args.no_floors:
        print(f"muse-rec compare: model-free floors not shown: {source}", file=sys.stderr)
    rows = summarise(runs, baseline)
    model_rows = list(rows)
    if floors:
        rows = rows + floor_rows(floors, next((r for r in rows if r["method"].lower() == baseline.lower()), None))
    # Every metric with its spread over seeds: the logloss column had none, though summarise measures it (the
    # JSON held logloss_std), and a logloss gap could not be read against the noise.
    cols = [c for c in ["method", "setting", "seeds", "gauc", "gauc_std", "auc", "auc_std", "logloss", "logloss_std",
                        "train_samples_per_s", "wall_seconds"] + [k for k in rows[0] if k.startswith("gauc_vs_")]
            if any(c in r for r in rows)]
    formats = {c: f for c, f in (("train_samples_per_s", ",.0f"), ("wall_seconds", ".1f")) if c in cols}
    table = metrics_table(rows, cols, formats=formats)  # `muse-rec evaluate`'s metrics.json has neither
    print(table)
    base = next((r for r in rows if r["method"].lower() == baseline.lower()), None)
    verdicts = []
    if base is not None and "gauc" not in base:  # every run of it has an undefined GAUC: no margin to measure
        verdicts.append(f"{_name(base)}: no run has a GAUC (undefined on its split), so no margin against it")
        base = None
    for r in model_rows:
        if base is None or r is base or "gauc" not in r:
            continue
        measured = [x for x in (r, base) if x.get("gauc_std") is not None]
        margin = r["gauc"] - base["gauc"]
        # The spread `muse-rec reproduce` reads its gaps against, of the same runs (it was the larger of
        # the two rows' stds here: one set of runs showed two spreads, and two margin-to-spread ratios).
        spread = pooled_std(metric_stats(runs, r, "gauc"), metric_stats(runs, base, "gauc"))
        if spread is not None:
            whose = (f"pooled std, {r['seeds']} and {base['seeds']} seeds" if len(measured) == 2 else
                     f"std, {_name(measured[0])}'s, {measured[0]['seeds']} seeds; the other has one")
            # Seeds with equal GAUCs (a model that scores every sample alike reaches 0.5 at every seed) have
            # no spread to divide by: the ratio was margin / 1e-12, "50000000000.0 x spread".
            ratio = (f"margin = {margin / spread:.1f} x spread" if spread > 0 else
                     "no margin-to-spread ratio (the seeds' GAUCs are equal)")
            verdicts.append(f"{_name(r)} - {_name(base)}: {margin:+.4f} GAUC; seed-to-seed spread ({whose}) "
                            f"{spread:.4f}; {ratio}")
        else:
            verdicts.append(f"{_name(r)} - {_name(base)}: {margin:+.4f} GAUC (one seed each: no spread measured)")
    if floors:
        verdicts.append(floor_verdict(model_rows, floors) + f" (floors {source})")
    for v in verdicts:
        print(v)
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            # Both or neither: a failed write leaves the earlier pair, never one of each run.
            markdown, as_json = _written_files(args.out)
            replace_texts({markdown: table + "\n\n" + "\n".join(verdicts) + "\n",
                           as_json: metrics_json_text({"rows": rows, "verdicts": verdicts, "floors": floors})})
        except OSError as e:
            print(f"muse-rec compare: --out {args.out}: cannot write ({e})", file=sys.stderr)
            return 2
    return 0
