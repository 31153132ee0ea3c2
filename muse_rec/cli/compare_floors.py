"""The model-free floors `muse-rec compare` shows beside the runs, and its verdict on them.

Floors come from ``--floors FILE`` (`load_floors`, checked to be of the split and data the runs scored),
else from the runs' metrics.json (a run records them when ``train.check_floors`` is on), else they are
computed for the runs' ``data.prepared`` (`floors_of_runs`). Runs of different data, split or seq_len get
no floors rather than another data set's. The verdict names the methods below the best floor, and apart
those below it only for want of an input the floor reads (`floor_options.floor_standing`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

from muse_rec.cli.compare_runs import RunFiles, max_batches_scored, row_name, spec_doc
from muse_rec.json_files import read_json_object
from muse_rec.metrics.floor_noise import errors_below
from muse_rec.metrics.floor_options import FloorStanding, floor_standing, lacked, sort_by_standing


def _floor_setting(run: str, metrics: Dict, files_read: RunFiles) -> Tuple[Path, Tuple[str, str, int, str]]:
    """(the file that says, (prepared data, eval split, seq_len, train split)): what a run's floors are of,
    from its spec.yaml (`spec_doc`: as `load_runs` read it), or for an evaluation (no spec.yaml) from the
    ``data`` its metrics.json records. FileNotFoundError where neither says; ValueError naming the file
    where it does not say."""
    where, doc = Path(run) / "spec.yaml", spec_doc(Path(run), files_read)
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


def floors_of_runs(paths: List[str], runs: List[Dict], cache: Optional[str],
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


def load_floors(path: str, paths: Sequence[str] = (), runs: Sequence[Dict] = (),
                files_read: Optional[RunFiles] = None) -> Dict:
    """The ``floors`` of a `muse-rec baselines --out` file (or of a run's metrics.json), checked to be of
    the split the runs ``runs`` (from ``paths``) scored, and of their history window and fit split where the
    file says (`_check_floors_window`): ValueError naming the file otherwise. ``files_read``: the runs'
    files as `load_runs` read them."""
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
    _check_floor_keys(f, doc)
    _check_floors_split(f, doc, paths, runs)
    _check_floors_data(f, doc, paths, runs)
    _check_floors_window(f, doc, paths, runs, {} if files_read is None else files_read)
    try:
        floors = check_floors(doc["floors"], f"--floors {f}")
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"--floors {f}: not a floors file of `muse-rec baselines --out` ({type(e).__name__}: {e})")
    if not floors:  # `baselines` always writes one (popularity); none would leave the runs unjudged, unsaid
        raise ValueError(f"--floors {f}: floors: no floor in it; pass a file of `muse-rec baselines --out` or "
                         "leave --floors out")
    return floors


# The keys of a floors file the checks below compare with the runs', and what each must be where present.
_TEXT_KEYS = ("split", "eval_split", "train_split", "prepared", "data_fingerprint")


def _check_floor_keys(f: Path, doc: Dict) -> None:
    """ValueError naming ``f`` and the key where a key the checks compare is present but of another type: the
    checks skip a key a file lacks (another writer's), and skipped one of the wrong type alike, so floors of
    ``options.seq_len: "x"`` judged runs of any window, and ``train_split: 3`` runs of any fit split."""
    for key in _TEXT_KEYS:
        if key in doc and not isinstance(doc[key], str):
            raise ValueError(f"--floors {f}: {key}: expected a split's or data's name (a string), got {doc[key]!r:.80}")
    checks = [("samples", doc.get("samples"), "samples" in doc)]
    if "options" in doc:
        if not isinstance(doc["options"], dict):
            raise ValueError(f"--floors {f}: options: expected the options of `muse-rec baselines` (an object), "
                             f"got {doc['options']!r:.80}")
        checks.append(("options.seq_len", doc["options"].get("seq_len"), "seq_len" in doc["options"]))
    for key, v, present in checks:
        if present and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"--floors {f}: {key}: expected an integer >= 0, got {v!r:.80}")


def _check_floors_split(f: Path, doc: Dict, paths: Sequence[str], runs: Sequence[Dict]) -> None:
    """Floors judge only the split they were computed on: ValueError naming the first run that scored
    another split, or, scoring the whole split, another number of samples (other prepared data), whose
    verdict they would decide. Keys a file lacks (another writer's) are not compared."""
    split, samples = doc.get("split", doc.get("eval_split")), doc.get("samples")
    for p, r in zip(paths, runs):
        other_split = split is not None and r.get("eval_split") is not None and r["eval_split"] != split
        whole = max_batches_scored(r, Path(p) / "metrics.json") == 0  # a partial evaluation scores fewer by design
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


def _check_floors_data(f: Path, doc: Dict, paths: Sequence[str], runs: Sequence[Dict]) -> None:
    """Floors judge only the prepared data they were computed on: ValueError naming the first run whose
    ``data_fingerprint`` (metrics.json) is not the file's. The split's name and sample count do not tell
    two data sets apart when they share a test split and differ in train (one world at two sizes), whose
    popularity and regression floors differ. A run recorded before session 26 has the fingerprint of
    that time: it is the file's data where that data is still readable and was its source
    (`PreparedData.made_from`). Files and runs without a fingerprint (older ones) are not compared."""
    theirs = doc.get("data_fingerprint")
    if not isinstance(theirs, str):
        return
    prepared = doc.get("prepared")
    for p, r in zip(paths, runs):
        scored = r.get("data_fingerprint")
        if not isinstance(scored, str) or scored == theirs or _made_from(prepared, theirs, scored):
            continue
        where = f" of {prepared}" if isinstance(prepared, str) else ""
        raise ValueError(f"--floors {f}: floors{where} (data fingerprint {theirs}), but {p} scored data {scored}: "
                         "they would judge it by other data; pass the floors of the runs' data (`muse-rec baselines "
                         "PREPARED --out FILE`) or leave --floors out")


def _made_from(prepared: object, fingerprint: str, recorded: str) -> bool:
    """Whether the prepared data at ``prepared``, still of ``fingerprint``, is what a run that recorded
    ``recorded`` (a fingerprint of an earlier version) scored; False where it cannot be read."""
    from muse_rec.data.prepared import PreparedData, PreparedDataError

    if not isinstance(prepared, str):
        return False
    try:
        data = PreparedData(prepared)
        return data.fingerprint == fingerprint and data.made_from(recorded)
    except (PreparedDataError, OSError, ValueError, KeyError):
        return False


def _check_floors_window(f: Path, doc: Dict, paths: Sequence[str], runs: Sequence[Dict],
                         files_read: RunFiles) -> None:
    """Floors judge only runs whose floors they are: a run's own are of its history window (``data.seq_len``,
    the newest behaviours its model reads) and fitted on its train split (`floors_of_run`). ValueError naming
    the first run whose floors another window or fit split would give: floors of the whole history judged a
    run of the newest 50 by signal it never sees. Two windows give the same floors when both hold every
    history of the scored split (a file of ``--seq-len 0`` beside runs of seq_len 1000 on histories of at
    most 1000), read from the run's prepared data; where that cannot be read the windows count as different.
    Runs whose data is unknown (no spec.yaml) and keys a file lacks (another writer's) are not compared."""
    options = doc.get("options")
    window = options.get("seq_len") if isinstance(options, dict) else None
    fitted_on = doc.get("train_split")
    longest: Dict[Tuple[str, str], Optional[int]] = {}  # (prepared, split) -> its longest history, None: unknown
    for p, r in zip(paths, runs):
        try:
            _, (prepared, split, seq_len, train_split) = _floor_setting(p, r, files_read)
        except (FileNotFoundError, ValueError):
            continue
        if isinstance(fitted_on, str) and fitted_on != train_split:
            raise ValueError(f"--floors {f}: floors fitted on split {fitted_on!r}, but {p} trained on "
                             f"{train_split!r}: its own floors are fitted there; pass them (`muse-rec baselines "
                             f"PREPARED --train-split {train_split} --out FILE`) or leave --floors out")
        if isinstance(window, bool) or not isinstance(window, int) or window == seq_len:
            continue
        if (prepared, split) not in longest:
            longest[(prepared, split)] = _longest_history(prepared, split)
        most = longest[(prepared, split)]
        if most is not None and all(w == 0 or w >= most for w in (window, seq_len)):
            continue  # both windows hold every history: the same floors
        known = "" if most is not None else f" (and {prepared} cannot be read to tell whether every history fits both)"
        raise ValueError(f"--floors {f}: floors of {_window(window)}, but {p} reads {_window(seq_len)} (data.seq_len "
                         f"{seq_len}){known}: they would judge it by what its model does not see; pass floors of its "
                         f"window (`muse-rec baselines PREPARED --seq-len {seq_len} --out FILE`) or leave --floors out")


def _window(seq_len: int) -> str:
    """A history window in words: ``seq_len`` 0 is the whole history."""
    return "the whole history" if seq_len == 0 else f"the newest {seq_len:,} behaviours"


def _longest_history(prepared: str, split: str) -> Optional[int]:
    """The longest behaviour history of ``split``'s user rows in prepared data ``prepared`` (0 without any),
    or None where the data or its offsets cannot be read."""
    import numpy as np

    from muse_rec.data.prepared import PreparedData, PreparedDataError

    try:
        data = PreparedData(prepared)
        data.require_split(split)
        offsets = data.array(f"{split}/seq_offsets.npy")
        return int(np.diff(offsets).max()) if len(offsets) > 1 else 0
    except (PreparedDataError, OSError, ValueError, KeyError):
        return None


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
    head = f"best model-free floor: {_floor_text(name, best)}"
    standings = [(r, floor_standing(r["gauc"], name, best["gauc"], floors,
                                    None if r.get("reads") is None else frozenset(r["reads"])))
                 for r in model_rows if "gauc" in r]
    doubted, blind = sort_by_standing(standings)
    if not doubted and not blind:
        return f"{head}; every method is above it"
    parts = []
    if doubted:
        below = _listed([r for r, _ in doubted], (name, best["gauc"]))
        text = f"BELOW it: {below} - check the learning rates, the number of steps and the data"
        # A row whose model compare cannot tell (no spec.yaml): below a floor of SCL cosines it may only lack
        # the vectors, as DIN does, not training.
        hint = next((s for r, s in doubted if s.visible_best is not None and r.get("reads") is None), None)
        if hint is not None:
            lack, them, _ = lacked(hint.lacks)
            text += (f" (a model that does not read {lack}, as DIN, cannot see what that floor reads: the best "
                     f"floor without {them} is {_floor_text(*hint.visible_best)})")
        # A row known not to read what the floor reads is doubted only when below the best floor it can see too
        # (TWIN, no SCL vectors, under popularity): said so, by name, not excused by the hint above.
        known: Dict[Tuple[FrozenSet[str], str], List[Tuple[Dict, FloorStanding]]] = {}
        for r, s in doubted:
            if s.visible_best is not None and r.get("reads") is not None:
                known.setdefault((s.lacks, s.visible_best[0]), []).append((r, s))
        for group in known.values():
            lack, them, _ = lacked(group[0][1].lacks)
            one = len(group) == 1
            text += (f" ({_listed([r for r, _ in group])} {'does' if one else 'do'} not read {lack} and "
                     f"{'is' if one else 'are'} below the best floor without {them} too, "
                     f"{_floor_text(*group[0][1].visible_best)})")
        parts.append(text)
    for (lacks, _), group in blind.items():
        lack, them, carry = lacked(lacks)
        one = len(group) == 1
        parts.append(f"below it only for want of {lack}: {_listed([r for r, _ in group], (name, best['gauc']))}, "
                     f"{'which does not read' if one else 'which do not read'} {them} and "
                     f"{'is' if one else 'are'} above the best floor without {them}, "
                     f"{_floor_text(*group[0][1].visible_best)}: {lack} "
                     f"{carry} signal {'it' if one else 'they'} cannot see")
    return f"{head}; " + "; ".join(parts)


def _floor_text(name: str, floor: Dict) -> str:
    """``"<description> GAUC 0.6576"``: a floor as the verdict names it (its key where it has no description)."""
    return f"{floor.get('description', name)} GAUC {floor['gauc']:.4f}"


def _listed(rows: List[Dict], below: Optional[Tuple[str, float]] = None) -> str:
    """``"DIN (0.6100), MUSE (0.6000)"``: the rows' names with their mean GAUC; with ``below`` (the name and GAUC
    of a floor they are below), how many of their recorded paired errors below it, where known (``floor_gap_se``,
    `floor_noise.recorded_gap_errors`): ``"MUSE (0.6615; 1.3 standard errors of 0.0065 below it)"``."""
    def one(r: Dict) -> str:
        se = None if below is None else (r.get("floor_gap_se") or {}).get(below[0])
        return f"{row_name(r)} ({r['gauc']:.4f}{'' if below is None else errors_below(r['gauc'], below[1], se)})"

    return ", ".join(one(r) for r in rows)
