"""The paired standard error of a run's gap to a floor (`muse_rec.metrics.floor_noise`), its cache file and the
floor line that uses it."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from muse_rec.data.prepared import PreparedData
from muse_rec.data.vocab import MISSING_ID
from muse_rec.metrics.floor_noise import FloorUsers, load_floor_users, paired_gap_se, save_floor_users, users_file
from muse_rec.metrics.floors import (NOISE_SES, FloorOptions, below_floor_message, cache_name, cached_floors,
                                     check_run_against_floors, compute_floors_and_users)
from muse_rec.metrics.kernels import UserAuc, user_auc


def _users(seed: int, n_users: int = 400) -> tuple[UserAuc, FloorUsers]:
    """A model's and one floor's per-user AUCs over the same users, strongly correlated (as a model and a floor
    ranking the same users' impressions are): the floor is the model's AUC less 0.04 plus noise of sd 0.04."""
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.choice(10**9, n_users, replace=False)).astype(np.int64)
    n = rng.integers(2, 40, n_users).astype(np.int64)
    pos = np.maximum(1, n // 4)
    model = rng.uniform(0.3, 1.0, n_users)
    floor = np.clip(model - 0.04 + rng.normal(0, 0.04, n_users), 0, 1)
    return UserAuc(keys, n, pos, model), FloorUsers(keys, n, {"f": floor})


def _gauc(n: np.ndarray, a: np.ndarray) -> float:
    return float(np.sum(n * a) / np.sum(n))


def test_paired_se_is_the_per_user_bootstrap_of_the_gap():
    """The delta-method error equals a per-user bootstrap's standard deviation of the GAUC gap: with B
    replicates the bootstrap's own relative error is ~1/sqrt(2B) (1.1% at B = 4000), so 4% is ~3.5 of them.
    An unpaired error (the two GAUCs' errors added) is several times larger here and fails it."""
    model, floor = _users(0)
    gauc = _gauc(model.n_samples, model.auc)
    se = paired_gap_se(model, floor, gauc)["f"]
    rng = np.random.default_rng(1)
    u = model.user_keys.size
    draws = rng.integers(0, u, (4000, u))
    n = model.n_samples[draws]
    gaps = (np.sum(n * model.auc[draws], 1) - np.sum(n * floor.auc["f"][draws], 1)) / np.sum(n, 1)
    assert se == pytest.approx(float(np.std(gaps)), rel=0.04)
    unpaired = math.hypot(float(np.std(np.sum(n * model.auc[draws], 1) / np.sum(n, 1))),
                          float(np.std(np.sum(n * floor.auc["f"][draws], 1) / np.sum(n, 1))))
    assert unpaired > 3 * se


def test_paired_se_refuses_users_that_are_not_the_floors():
    """An evaluation of other users (cut short, another split) or a GAUC that is not these users' gives no error
    rather than a wrong one."""
    model, floor = _users(2)
    gauc = _gauc(model.n_samples, model.auc)
    assert set(paired_gap_se(model, floor, gauc)) == {"f"}
    fewer = UserAuc(model.user_keys[1:], model.n_samples[1:], model.n_positives[1:], model.auc[1:])
    assert paired_gap_se(fewer, floor, _gauc(fewer.n_samples, fewer.auc)) == {}
    assert paired_gap_se(model, floor, gauc + 1e-6) == {}
    # A user with one label only is no GAUC user: the model's valid users are compared, not all its rows.
    one_label = UserAuc(np.append(model.user_keys, 10**10), np.append(model.n_samples, 5),
                        np.append(model.n_positives, 0), np.append(model.auc, np.nan))
    assert paired_gap_se(one_label, floor, gauc) == paired_gap_se(model, floor, gauc)


def test_floor_users_file_round_trips_and_refuses_what_is_not_its_floors(tmp_path):
    """The cache's users file is read without pickles and kept only where it matches the cached floors."""
    model, floor = _users(3)
    floors = {"f": {"gauc": floor.gauc("f")}}
    path = tmp_path / "floors-test-0123.users.npz"
    save_floor_users(path, floor)
    back = load_floor_users(path, floors, model.user_keys.size)
    assert back is not None and np.array_equal(back.auc["f"], floor.auc["f"])
    assert np.array_equal(back.user_keys, floor.user_keys) and np.array_equal(back.n_samples, floor.n_samples)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    assert load_floor_users(path, {"f": {"gauc": floor.gauc("f") + 1e-6}}, model.user_keys.size) is None
    assert load_floor_users(path, floors, model.user_keys.size + 1) is None
    assert load_floor_users(path, {**floors, "g": {"gauc": 0.5}}, model.user_keys.size) is None
    assert load_floor_users(tmp_path / "absent.users.npz", floors, model.user_keys.size) is None
    shifted = FloorUsers(floor.user_keys, floor.n_samples, {"f": floor.auc["f"] + 2.0})  # AUCs above 1
    save_floor_users(path, shifted)
    assert load_floor_users(path, {"f": {"gauc": shifted.gauc("f")}}, model.user_keys.size) is None
    with open(path, "wb") as f:  # an object array needs pickle: refused, never unpickled
        np.savez(f, user_keys=np.array([object()], dtype=object))
    assert load_floor_users(path, floors, 1) is None
    path.write_bytes(b"PK\x03\x04 not a zip")
    assert load_floor_users(path, floors, model.user_keys.size) is None


FLOORS = {"best": {"name": "logistic_regression", "description": "logistic regression", "gauc": 0.6700},
          "floors": {"logistic_regression": {"description": "logistic regression", "gauc": 0.6700},
                     "popularity": {"description": "popularity", "gauc": 0.6000}}}


def test_floor_line_says_a_gap_within_the_noise_is_one():
    """Below the best floor by 0.0050: with a paired error of 0.0045 (1.1 errors) the line says the split cannot
    tell the two apart; with 0.0010 (5.0) that a score without training ranks it better, as without an error."""
    below, noisy = below_floor_message(0.6650, FLOORS, gap_se={"logistic_regression": 0.0045})
    assert below and "(-0.0050, 1.1 standard errors of 0.0045)" in noisy
    assert f"less than {NOISE_SES:g} standard errors of this split's per-user noise" in noisy, noisy
    assert "ranks this split better" not in noisy
    for se in ({"logistic_regression": 0.0010}, None):
        below, sure = below_floor_message(0.6650, FLOORS, gap_se=se)
        assert below and "a score without training ranks this split better than the model" in sure, sure
    assert "5.0 standard errors of 0.0010" in below_floor_message(0.6650, FLOORS, gap_se={"logistic_regression": 0.001})[1]
    above = below_floor_message(0.6800, FLOORS, gap_se={"logistic_regression": 0.0040})
    assert above == (False, "GAUC 0.6800 is above the best model-free floor 'logistic regression' 0.6700 "
                            "(+0.0100, 2.5 standard errors of 0.0040)")


def test_run_check_records_the_paired_error_and_reuses_the_cache(tiny, tmp_path, caplog):
    """`check_run_against_floors` with the run's per-user AUCs: every floor's ``gap_se`` is the formula's over the
    split's users (computed here apart from the module), the users file is cached beside the JSON and read back
    (no second scoring), and a cache written without it (by an older version) is scored again once."""
    data = PreparedData(str(tiny))
    opts = FloorOptions(seq_len=60)
    result, floor_users = compute_floors_and_users(data, "test", opts)
    keys = np.asarray(data.array("test/sample_user_keys.npy"))
    labels = data.labels("test")
    rng = np.random.default_rng(5)
    scores = 0.5 * labels + rng.uniform(0, 1, labels.size)  # a model that ranks better than chance
    model = user_auc(keys, scores, labels).without(MISSING_ID)
    gauc = model.gauc()
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="muse_rec")
    got = check_run_against_floors(data, "test", 60, gauc, str(cache), model_users=model)
    valid = model.valid
    n, a = model.n_samples[valid], model.auc[valid]
    assert set(got["floor_gap_se"]) == set(got["floors"])
    for name, floor in got["floors"].items():
        d = a - floor_users.auc[name]
        gap = np.sum(n * d) / np.sum(n)
        want = math.sqrt(d.size / (d.size - 1) * np.sum((n * (d - gap)) ** 2)) / np.sum(n)
        assert got["floor_gap_se"][name] == pytest.approx(want, rel=1e-12), name
        assert gap == pytest.approx(gauc - floor["gauc"], abs=1e-12)
    assert got["best_floor"]["gap_se"] == got["floor_gap_se"][result["best"]["name"]]
    # The floors themselves stay the split's, the same for every run: `compare` and the reproduce report tell
    # runs of one data set by them (a run's own errors inside them made every run's floors differ).
    chance = user_auc(keys, rng.uniform(0, 1, labels.size), labels).without(MISSING_ID)
    other = check_run_against_floors(data, "test", 60, chance.gauc(), str(cache), model_users=chance)
    assert other["floors"] == got["floors"] and other["floor_gap_se"] != got["floor_gap_se"]
    assert "standard errors of" in caplog.text
    entry = cache / cache_name(data, "test", opts)
    assert entry.exists() and users_file(entry).exists()
    caplog.clear()
    assert check_run_against_floors(data, "test", 60, gauc, str(cache), model_users=model) == got
    assert "computing the model-free floors" not in caplog.text  # read back, not scored again
    users_file(entry).unlink()  # a cache of the JSON only: what `compare` and older versions wrote
    cached_floors(data, "test", opts, str(cache))
    assert not users_file(entry).exists()  # a reader without a model does not need it, nor score for it
    assert check_run_against_floors(data, "test", 60, gauc, str(cache), model_users=model) == got
    assert users_file(entry).exists()
    no_users = check_run_against_floors(data, "test", 60, gauc, str(cache))
    assert "gap_se" not in no_users["best_floor"] and "floor_gap_se" not in no_users


def test_the_evaluation_keeps_the_per_user_aucs_behind_its_gauc():
    """The floor check's errors need the run's per-user AUCs. `compute` keeps those its GAUC averages (users
    without an id left out), so the trainer no longer reads them back from `predictions.parquet` and sorts them
    a second time; they are the same arrays `user_auc` gives on those rows."""
    from muse_rec.metrics import PredictionAccumulator

    rng = np.random.default_rng(5)
    n = 3000
    users = rng.integers(0, 120, n).astype(np.int64)  # user 0 = MISSING_ID: samples of nobody
    labels = (rng.random(n) < 0.3).astype(np.int8)
    scores = np.round(rng.random(n), 2)  # ties, as a float32 model's scores have
    acc = PredictionAccumulator(no_user_key=MISSING_ID)
    assert acc.user_aucs is None
    for part in np.array_split(np.arange(n), 7):  # in batches, as an evaluation updates it
        acc.update(users[part], users[part] + 1, labels[part], scores[part], np.ones(part.size, np.int8))
    metrics = acc.compute()
    want = user_auc(users, scores, labels).without(MISSING_ID)
    got = acc.user_aucs
    assert MISSING_ID not in got.user_keys and got.user_keys.size == want.user_keys.size == metrics["users"]
    for field in ("user_keys", "n_samples", "n_positives", "auc"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    assert got.gauc() == metrics["gauc"]
    acc.reset()
    assert acc.user_aucs is None  # a new evaluation does not see the last one's users


def test_reproduce_computes_the_per_user_aucs_before_its_job(tiny, tmp_path):
    """`muse-rec reproduce` scores the floors before its job so that no rank scores a split inside it (the other
    ranks would wait past the process group's timeout on a release-sized split). A cache from before the per-user
    file had the JSON only: each run's check would then score the split again inside the job; the
    precomputation now writes the per-user file too."""
    from muse_rec.reproduce.plan import Config, Run
    from muse_rec.reproduce.runner import precompute_floors, run_overrides
    from muse_rec.spec import load_spec

    out = tmp_path / "out"
    run = Run(Config("din", "specs/demo/din.yaml", ("data.seq_len=60",)), 0)
    spec = load_spec(run.config.spec_path, run_overrides(out, run, str(tiny)))
    cache = Path(spec.run_dir).parent / ".floors"
    data = PreparedData(str(tiny))
    entry = cache / cache_name(data, "test", FloorOptions(seq_len=60))
    cached_floors(data, "test", FloorOptions(seq_len=60), str(cache))
    users_file(entry).unlink()  # the JSON only, as written before
    lines: list = []
    precompute_floors(out, str(tiny), [run], (), lines.append)
    assert users_file(entry).exists(), lines
    assert any("model-free floors of test at seq_len 60: ready" in line for line in lines), lines


def _run(d: Path, method: str, gauc: float, floors: dict, errors: dict | None) -> Path:
    import json

    d.mkdir(parents=True)
    m = {"method": method, "gauc": gauc, "auc": gauc, "logloss": 0.4, "floors": floors}
    if errors is not None:
        m["floor_gap_se"] = errors
    (d / "metrics.json").write_text(json.dumps(m))
    return d


def test_compare_says_how_many_recorded_errors_below_the_best_floor(tmp_path, capsys):
    """`compare` lists a row below the best floor with its gap in the paired errors its runs recorded (their mean
    over seeds, `compare.floor_gap_errors`), where every run recorded one against these floors; else as before."""
    from muse_rec.cli import main as cli_main

    floors = {"cos_mean_history": {"description": "cos(target, mean history SCL)", "gauc": 0.6300, "auc": 0.6,
                                   "logloss": None},
              "popularity": {"description": "smoothed train CTR of the target item", "gauc": 0.5200, "auc": 0.5,
                             "logloss": 0.4}}
    a = _run(tmp_path / "a", "MUSE", 0.6250, floors, {"cos_mean_history": 0.0040, "popularity": 0.01})
    b = _run(tmp_path / "b", "MUSE", 0.6150, floors, {"cos_mean_history": 0.0060, "popularity": 0.01})
    assert cli_main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    # mean GAUC 0.6200, 0.0100 below; the seeds' mean error 0.0050: 2.0 errors
    assert "BELOW it: MUSE (0.6200; 2.0 standard errors of 0.0050 below it)" in out, out
    c = _run(tmp_path / "c", "MUSE", 0.6200, floors, None)  # a run without errors: the row gets none
    assert cli_main(["compare", str(a), str(c)]) == 0
    assert "BELOW it: MUSE (0.6225) - check" in capsys.readouterr().out
    other = {**floors, "popularity": {**floors["popularity"], "gauc": 0.5300}}  # errors against other floors
    d = _run(tmp_path / "d", "DIN", 0.6000, other, {"cos_mean_history": 0.0040, "popularity": 0.01})
    assert cli_main(["compare", str(d), "--floors", str(_floors_file(tmp_path, floors))]) == 0
    assert "BELOW it: DIN (0.6000) - check" in capsys.readouterr().out


def _floors_file(tmp_path: Path, floors: dict) -> Path:
    import json

    f = tmp_path / "floors.json"
    f.write_text(json.dumps({"floors": floors}))
    return f


def test_a_malformed_recorded_error_is_refused_naming_the_key(tmp_path, capsys):
    """A run directory can come from elsewhere: a recorded error that is not a number >= 0 is one line, exit 2."""
    from muse_rec.cli import main as cli_main

    floors = {"popularity": {"description": "p", "gauc": 0.5, "auc": 0.5, "logloss": 0.4}}
    for bad, words in (({"popularity": -1.0}, "floor_gap_se.popularity: expected a value in [0, inf]"),
                       ({"popularity": "x"}, "floor_gap_se.popularity: expected a finite number or null"),
                       ([0.1], "floor_gap_se: expected {floor name: standard error}")):
        run = _run(tmp_path / f"r{len(list(tmp_path.iterdir()))}", "MUSE", 0.6, floors, bad)
        assert cli_main(["compare", str(run)]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err


def test_reproduce_report_says_how_many_recorded_errors_below_the_best_floor(tmp_path):
    """The reproduce report's "Below the best floor" list gives each configuration's gap in its seeds' recorded
    paired errors (their mean), as `compare` does; a configuration whose runs recorded none is listed as before."""
    import json
    import re

    from muse_rec.reproduce.plan import build_plan
    from muse_rec.reproduce.report import write_report
    from muse_rec.reproduce.results import load_metrics
    from tests.reproduce.test_report import write_fake_runs

    floors = {"popularity": {"description": "smoothed train CTR of the target item", "gauc": 0.52, "auc": 0.53,
                             "logloss": 0.41},
              "cos_mean_history": {"description": "cos(target, mean history SCL)", "gauc": 0.63, "auc": 0.62,
                                   "logloss": None}}
    plan = build_plan(["table5"], seeds=2)
    write_fake_runs(tmp_path, plan)  # GAUC: DIN 0.55, ..., MUSE 0.64
    gaucs = {}
    for f in (tmp_path / "runs").glob("*/metrics.json"):
        m = json.loads(f.read_text())
        seed = int(f.parent.name.rsplit("-s", 1)[1])
        errors = {} if f.parent.name.startswith("twin") else {"floor_gap_se": {"cos_mean_history": 0.01 * (seed + 1),
                                                                               "popularity": 0.02}}
        f.write_text(json.dumps({**m, "floors": floors, **errors}))
        gaucs.setdefault(f.parent.name.rsplit("-s", 1)[0], []).append(m["gauc"])
    md = write_report(plan, load_metrics(tmp_path, plan), tmp_path).markdown
    below = md[md.index("**Below the best floor**"):].split("\n")[0]
    din = sum(gaucs["din"]) / len(gaucs["din"])
    assert f"`din` ({din:.4f}; {(0.63 - din) / 0.015:.1f} standard errors of 0.0150 below it)" in below, below
    assert re.search(r"`twin` \(0\.\d{4}\)[,.:]", below), below  # recorded none: no errors said


def test_compare_lists_a_row_below_only_for_want_with_its_errors_too():
    """A row below the best floor only for want of what it reads (DIN, no SCL vectors) is listed with its errors as
    the reproduce report lists it."""
    from muse_rec.cli.compare_floors import floor_verdict

    floors = {"cos_mean_history": {"description": "cos(target, mean history SCL)", "gauc": 0.6300},
              "popularity": {"description": "smoothed train CTR of the target item", "gauc": 0.5200}}
    din = {"method": "DIN", "gauc": 0.5500, "reads": [], "floor_gap_se": {"cos_mean_history": 0.0100}}
    verdict = floor_verdict([din], floors)
    assert ("below it only for want of SCL vectors and the long-term history: DIN (0.5500; 8.0 standard errors of "
            "0.0100 below it), which does not read them") in verdict, verdict


def test_a_damaged_users_count_in_the_cache_is_scored_again(tiny, tmp_path):
    """The cache is a file on disk: a best floor whose users count is not an integer (was int("x"): a traceback at
    the end of a training run) is an entry scored again, and the check goes on with its errors."""
    import json

    data = PreparedData(str(tiny))
    opts = FloorOptions(seq_len=60)
    cache = tmp_path / "cache"
    cached_floors(data, "test", opts, str(cache))
    entry = cache / cache_name(data, "test", opts)
    doc = json.loads(entry.read_text())
    name = doc["best"]["name"]
    doc["best"]["gauc_users"] = "x"
    doc["floors"][name]["gauc_users"] = "x"  # the best floor is one of the floors, as the cache reader checks
    entry.write_text(json.dumps(doc))
    keys, labels = np.asarray(data.array("test/sample_user_keys.npy")), data.labels("test")
    model = user_auc(keys, labels + np.random.default_rng(0).uniform(0, 1, labels.size), labels).without(MISSING_ID)
    got = check_run_against_floors(data, "test", 60, model.gauc(), str(cache), model_users=model)
    assert got["best_floor"]["gap_se"] > 0
    assert isinstance(json.loads(entry.read_text())["best"]["gauc_users"], int)  # written again, whole
