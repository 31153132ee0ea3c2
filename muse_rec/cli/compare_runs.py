"""The run directories `muse-rec compare` is given, read and checked as untrusted input.

Each run's metrics.json (a method name and numeric metrics), the model it scores (a run scores its own; an
evaluation names its checkpoint), the prepared data and the part of the split it scored, and the settings it
trained with (its spec.yaml without the seed, and the ranks of its run.json). Runs that cannot be compared
(another split, other data, another part of the split, one model or one run given twice) are refused with a
ValueError naming the run and the file; runs of one method with different settings get a label each, so they
are separate rows of the table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from muse_rec.json_files import refuse_special_file
from muse_rec.metrics.floor_options import model_reads
from muse_rec.spec.yaml_text import TOO_DEEP


# A run directory's spec.yaml and run.json as compare read them (a spec.yaml: None without the file; a run.json:
# {} without it), by the file's resolved path: each is read once, so what compare says of one run comes from
# one version of each file.
RunFiles = Dict[Path, Optional[Dict]]


def load_runs(paths: List[str], files_read: Optional[RunFiles] = None) -> List[Dict]:
    """Each run's metrics.json, checked: a JSON object with a ``method`` name and numeric metrics
    (a run directory from elsewhere is untrusted input); ValueError naming the file and key.
    ``files_read`` keeps the spec.yaml and run.json files read here (`spec_doc`, `_run_record`) for the floors
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
        extents.setdefault(max_batches_scored(runs[-1], f), p)
        settings.append(_settings_of(trained_in, files_read) if trained_in is not None else None)
        reads = _reads(trained_in, files_read) if trained_in is not None else None
        if reads is not None:  # for `floor_verdict`
            runs[-1]["reads"] = reads
        if settings[-1] is not None and "data.train_split" in settings[-1]:  # for `split_warnings`
            runs[-1]["train_split"] = settings[-1]["data.train_split"]
            runs[-1].setdefault("eval_split", settings[-1].get("data.eval_split"))
        if settings[-1] is not None:
            # For `compare.baseline_row`: a margin is read against the baseline trained at the same settings.
            runs[-1]["regime"] = json.dumps({k: v for k, v in settings[-1].items()
                                             if not k.startswith("model.") and k != "train.seed"},
                                            sort_keys=True, default=str)
            # A copied run directory, or a re-run: not another seed.
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


def max_batches_scored(metrics: Dict, f: Path) -> int:
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


def spec_doc(run_dir: Path, files_read: RunFiles) -> Optional[Dict]:
    """A run directory's spec.yaml, read once per compare (kept in ``files_read``): the settings a run is
    grouped by and the data its floors are computed for came from two reads of it, so a spec.yaml
    replaced in between (a run started again in that directory) grouped the run as one spec and
    judged it by the floors of another's data. None without the file; ValueError naming the file
    when it is not a spec."""
    from muse_rec.spec.yaml_text import parse_yaml

    f = run_dir / "spec.yaml"
    key = f.resolve()
    if key not in files_read:
        # As a spec is read (`parse_yaml`): a key given twice is refused, not silently its last value.
        doc = _read_document(f, parse_yaml, (), "YAML") if f.exists() else None
        if doc is not None and not isinstance(doc, dict):
            raise ValueError(f"{f}: expected the run's resolved spec (a mapping), got {type(doc).__name__}")
        files_read[key] = doc
    return files_read[key]


def _settings_of(run_dir: Path, files_read: RunFiles) -> Optional[Dict]:
    """The training settings of a run directory's spec.yaml (`spec_doc`, with its seed) and, from its
    run.json, the number of ranks it trained on (``world_size``: N ranks of train.batch_size step N
    times as few times, so 1 and 2 ranks are two settings, not a run and its copy). None without a
    spec.yaml (e.g. a metrics.json written by hand); ValueError naming the file if it is not a spec."""
    from muse_rec.spec import training_settings

    doc = spec_doc(run_dir, files_read)
    if doc is None:
        return None
    settings = training_settings(doc)
    world_size = _world_size_of(run_dir / "run.json", files_read)
    if world_size is not None:
        settings["world_size"] = world_size
    return settings


def _reads(run_dir: Path, files_read: RunFiles) -> Optional[List[str]]:
    """What the model a run directory trained reads of the floors' inputs (`floor_options.model_reads`: SCL
    vectors, the long-term history), sorted, from its spec.yaml (the resolved spec, `spec_doc`: the same read
    as its settings); None when that is unknown (no spec.yaml, one without a ``model`` section, or one that is
    not a valid spec: a hand-written metrics.json, a spec of another version)."""
    from muse_rec.spec import SpecError, from_dict

    doc = spec_doc(run_dir, files_read)
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
    except RecursionError:  # both parsers recurse per nesting level: thousands of [[[...]]] were a traceback
        raise ValueError(f"{path}: not valid {kind} ({TOO_DEEP})") from None


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


def row_name(row: Dict) -> str:
    """A table row's method, with its setting when its method has several."""
    return f"{row['method']} [{row['setting']}]" if row.get("setting") else row["method"]


def _value(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)
