"""Items 5 (specs), 7 and 10 of issue 13: non-finite numbers, --set / extends / duplicate-key
errors, request files that are not UTF-8, nested too deep or have duplicate keys, strict metrics.json;
a spec naming a split the prepared data does not have."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from muse_rec.serving.request import RequestError, parse_requests
from muse_rec.spec import SpecError, load_spec
from muse_rec.training.results import write_json
from tests.conftest import REPO, subprocess_env
from tests.robustness.conftest import SPEC, assert_bad_input, cli, cli_without_torch, sets

SPEC_PATH = Path(__file__).resolve().parents[2] / SPEC


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan", "1e999"])
def test_non_finite_numbers_in_a_spec_are_refused(tmp_path, value):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"extends: {SPEC_PATH}\ntrain:\n  dense_optimizer:\n    lr: {value}\n")
    with pytest.raises(SpecError, match=r"s.yaml: train.dense_optimizer.lr: expected a finite number"):
        load_spec(spec)


def test_set_error_names_the_override():
    out = cli("train", "--spec", SPEC, "--set", "model.gsu.top_k=lots")
    assert_bad_input(out, "--set model.gsu.top_k=lots: model.gsu.top_k: expected an integer")
    with pytest.raises(SpecError, match=r"^--set train.sparse_optimizer.lr=.inf: train.sparse_optimizer.lr: "):
        load_spec(SPEC_PATH, ["train.sparse_optimizer.lr=.inf"])
    with pytest.raises(SpecError, match=r"^--set model.gsu.topk=3: model.gsu.topk: unknown key"):
        load_spec(SPEC_PATH, ["model.gsu.topk=3"])


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "rank", "plan"])
def test_a_bad_spec_is_refused_before_torch_is_imported(tmp_path, command):
    """Every command that reads a spec checks it (and its --set) first: a typo costs no torch /
    TorchRec start-up (seconds) before its one-line message."""
    (tmp_path / "req.json").write_text(json.dumps({"user": 1, "candidates": [1]}))
    extra = {"evaluate": ["--out", str(tmp_path / "eval")], "export": ["--out", str(tmp_path / "exp")],
             "rank": ["--request", str(tmp_path / "req.json")]}.get(command, [])
    out = cli_without_torch(command, "--spec", SPEC, "--set", "model.gsu.top_k=lots", *extra)
    assert_bad_input(out, f"muse-rec {command}: --set model.gsu.top_k=lots: model.gsu.top_k: expected an integer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["req.json"]  # nothing written


def test_a_launch_checks_and_a_dry_run_need_no_torch(tmp_path):
    """`muse-rec launch`'s checks before it submits (the spec, the run directory, the prepared data) and its dry
    run import no torch: they imported it (~2 s of a ~2.5 s dry run) with the ranks' run-start module, for one
    function that only reads the prepared data's layout."""
    sets = ["--set", f"output_dir={tmp_path}/runs/{{name}}", "--set", f"data.prepared={tmp_path}/absent"]
    out = cli_without_torch("launch", "--profile", "cpu-single", "--spec", SPEC, *sets)
    assert_bad_input(out, "muse-rec launch: ", f"data.prepared = '{tmp_path}/absent': no prepared data there")
    out = cli_without_torch("launch", "--profile", "cpu-single", "--spec", SPEC, *sets, "--dryrun")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert not any(tmp_path.iterdir())  # nothing submitted, nothing written


def test_compare_baselines_and_reproduce_refuse_a_missing_input_before_torch_is_imported(tmp_path):
    """`compare` reads JSON files, `baselines` and `reproduce --prepared` check their options and
    the prepared layout first: a missing run directory, prepared directory or a bad option is named
    at once."""
    out = cli_without_torch("compare", str(tmp_path / "a"), str(tmp_path / "b"))
    assert_bad_input(out, f"muse-rec compare: {tmp_path / 'a'}/metrics.json: no metrics.json")
    out = cli_without_torch("baselines", str(tmp_path / "prepared"))
    assert_bad_input(out, f"muse-rec baselines: {tmp_path / 'prepared'}: no meta.json")
    out = cli_without_torch("baselines", str(tmp_path / "prepared"), "--top-k", "0")
    assert_bad_input(out, "muse-rec baselines: --top-k must be > 0, got 0")  # the flag, not the field
    out = cli_without_torch("baselines", str(tmp_path / "prepared"), "--prior-strength", "inf")
    assert_bad_input(out, "muse-rec baselines: --prior-strength must be a finite number > 0, got inf")
    out = cli_without_torch("reproduce", str(tmp_path / "out"), "--prepared", str(tmp_path / "prepared"))
    assert_bad_input(out, f"muse-rec reproduce: prepared data {tmp_path / 'prepared'}: ", "no meta.json")
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("command", ["export", "evaluate"])
def test_a_bad_out_is_refused_before_torch_is_imported(tmp_path, command):
    """`export` and `evaluate` check --out (under a file; holding someone else's files) before the
    torch / TorchRec start-up (seconds), as they check the spec."""
    blocker = tmp_path / "a_file"
    blocker.write_text("kept")
    out = cli_without_torch(command, "--spec", SPEC, "--out", str(blocker / "out"))
    assert_bad_input(out, f"muse-rec {command}: --out {blocker / 'out'}: cannot be created: {blocker} is not a directory")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("kept")
    out = cli_without_torch(command, "--spec", SPEC, "--out", str(theirs))
    assert_bad_input(out, f"muse-rec {command}: --out {theirs}: holds files this command did not write (notes.txt)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "theirs"] and blocker.read_text() == "kept"
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]


def test_missing_extends_names_the_referencing_file(tmp_path):
    spec = tmp_path / "child.yaml"
    spec.write_text("extends: nowhere/parent.yaml\nname: x\n")
    with pytest.raises(SpecError, match=r"child.yaml: extends: .*nowhere/parent.yaml: spec file not found"):
        load_spec(spec)


def test_duplicate_keys_in_a_spec_are_an_error(tmp_path):
    spec = tmp_path / "dup.yaml"
    spec.write_text("name: a\ntrain:\n  batch_size: 8\n  batch_size: 16\n")
    with pytest.raises(SpecError, match=r"dup.yaml: not valid YAML: .*duplicate key 'batch_size'.*line 4"):
        load_spec(spec)


@pytest.mark.parametrize("value", ["9" * 5000, "2026-13-01"])
def test_a_value_yaml_cannot_convert_is_named_in_one_line(trained, tmp_path, value):
    """An integer past Python's 4,300-digit bound or an impossible date in a spec, an override or a run's
    spec.yaml, or a huge integer in its run.json: the parser's ValueError was a traceback (exit 1), or in
    `compare` one line that named no file."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"extends: {REPO / SPEC}\ntrain:\n  seed: {value}\n")
    assert_bad_input(cli("evaluate", "--spec", str(spec), "--out", str(tmp_path / "ev")), str(spec), "not valid YAML")
    assert_bad_input(cli("evaluate", "--spec", SPEC, "--set", f"train.seed={value}", "--out", str(tmp_path / "ev")),
                     "override 'train.seed=", "not valid YAML")
    run = trained.copy_run(tmp_path / "runs") / "din"
    spec_yaml = (run / "spec.yaml").read_text()
    (run / "spec.yaml").write_text(spec_yaml.replace("seed: ", f"seed: {value} #", 1))
    assert_bad_input(cli("compare", str(run)), str(run / "spec.yaml"))
    (run / "spec.yaml").write_text(spec_yaml)
    (run / "run.json").write_text(json.dumps({**json.loads((run / "run.json").read_text()), "world_size": 0})
                                  .replace('"world_size": 0', '"world_size": ' + "9" * 5000))
    assert_bad_input(cli("compare", str(run)), str(run / "run.json"))


@pytest.mark.parametrize("payload,needle", [
    (b'{"user": 1, "candidates": [1, 2]}\xff\xfe', "not UTF-8 text"),
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    (b'{"user": 1, "candidates": [1], "candidates": [2]}', "duplicate key 'candidates'"),
    (b'{"user": NaN, "candidates": [1]}', "NaN is not valid JSON"),
])
def test_bad_request_files_exit_2_in_one_line(tmp_path, payload, needle):
    req = tmp_path / "req.json"
    req.write_bytes(payload)
    out = cli("rank", "--spec", SPEC, "--request", str(req))  # refused before any model or data is read
    assert_bad_input(out, str(req), needle)
    with pytest.raises(RequestError, match=needle):
        parse_requests(payload)


@pytest.mark.parametrize("payload,field", [
    (b'{"user": 1, "candidates": ["x"]}', "request.candidates[0]: expected an int64 item id"),
    (b'[{"user": 1, "candidates": [1]}, {"user": true, "candidates": [1]}]', "request[1].user: expected an int64"),
    (b'{"user": 1}', "request: missing field(s) ['candidates']"),
    (b'{"user": 1, "candidates": [2], "extra": 3}', "request: unknown field(s) ['extra']"),
    (b'{"user": 1, "candidates": [1], "user": 2}', "duplicate key 'user'"),
])
@pytest.mark.parametrize("from_stdin", [False, True])
def test_a_bad_request_names_its_file_once_and_its_field(tmp_path, payload, field, from_stdin):
    """A request's field errors named the field (``request.candidates[0]``) but not the file it came
    from; a bad request in stdin was called ``-``. Every request error names its source once."""
    req = tmp_path / "req.json"
    req.write_bytes(payload)
    argv = [sys.executable, "-m", "muse_rec.cli", "rank", "--spec", SPEC, "--request", "-" if from_stdin else str(req)]
    out = subprocess.run(argv, cwd=REPO, env=subprocess_env(), input=payload, capture_output=True, timeout=300)
    out = subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode(), out.stderr.decode())
    source = "stdin" if from_stdin else str(req)
    assert_bad_input(out, f"muse-rec rank: {source}: {field}")
    assert out.stderr.count(source) == 1, out.stderr


@pytest.mark.parametrize("field,payload", [
    ("request.candidates[1]", b'{"user": 1, "candidates": [1, ' + b"9" * 5000 + b"]}"),
    ("request[0].user", b'[{"user": -' + b"1" * 4301 + b', "candidates": [1]}]'),
    ("request.user", b'{"user": 12345678901234567890, "candidates": [1]}'),  # 20 digits: past int64 too
])
def test_an_integer_id_of_thousands_of_digits_is_named_by_its_field(tmp_path, field, payload):
    """An id of more than 4,300 digits was a ValueError traceback from json.loads (Python's limit
    on integer conversion), exit 1; it is refused like any id beyond int64, naming its field."""
    req = tmp_path / "req.json"
    req.write_bytes(payload)
    out = cli("rank", "--spec", SPEC, "--request", str(req))
    assert_bad_input(out, f"{field}: expected an int64", "an integer of")
    with pytest.raises(RequestError, match=rf"^{re.escape(field)}: expected an int64 .*got an integer of \d+ digits$"):
        parse_requests(payload)


def test_metrics_json_is_strict_json(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"gauc": float("nan"), "auc": 0.5, "grouped": {"x": float("inf"), "n": 3}, "xs": [1.0, math.nan]})
    doc = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert doc["gauc"] is None and "undefined" in doc["gauc_undefined"] and doc["auc"] == 0.5
    assert doc["grouped"]["x"] is None and doc["grouped"]["n"] == 3 and doc["xs"] == [1.0, None]
    # An infinite value (the last seq-length bin's open upper edge) is not "undefined for this data".
    assert "unbounded" in doc["grouped"]["x_undefined"] and "undefined for this data" not in doc["grouped"]["x_undefined"]


@pytest.mark.parametrize("key", ["train_split", "eval_split"])
def test_a_split_the_data_does_not_have_is_named_before_anything_is_written(prepared_tiny, tmp_path, key):
    runs = tmp_path / "runs"
    out = cli("train", "--spec", SPEC, *sets(prepared_tiny, runs, ["train.max_steps=1", f"data.{key}=valid"]),
              "--device", "cpu")
    assert_bad_input(out, f"data.{key} = 'valid'", "no such split", "['test', 'train']")
    assert not runs.exists()


def test_evaluate_names_an_unknown_eval_split(trained, tmp_path):
    out = cli("evaluate", "--spec", SPEC, *trained.sets(["data.eval_split=valid"]), "--out", str(tmp_path / "ev"))
    assert_bad_input(out, "data.eval_split = 'valid'", "no such split")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_job_the_planner_cannot_fit_is_one_line_on_every_rank(prepared_tiny, tmp_path, nproc):
    """A batch whose working set exceeds a rank's memory: TorchRec's `PlannerError` traceback before,
    on rank 0 only (the other ranks waited in the plan's broadcast). Now every rank exits with one line
    naming the keys that size the reservation and the command that says what would fit."""
    from tests.training.conftest import run_ranks

    runs = tmp_path / "runs"
    out = run_ranks(["train", "--spec", SPEC, *sets(prepared_tiny, runs, ["train.batch_size=100000000"]),
                     "--device", "cpu"], nproc=nproc, check=False, timeout=300)
    # With 2 ranks torchrun itself ends with its ChildFailedError report; no rank may show one.
    assert "PlannerError" not in out.stderr and "]: Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("muse-rec train: no sharding plan fits")]
    assert len(lines) == nproc, out.stderr[-3000:]  # one per rank
    for ln in lines:
        assert f"{nproc} x cpu" in ln and "insufficient storage" in ln and "train.batch_size 100000000" in ln, ln
        assert f"muse-rec plan --spec SPEC --prepared {prepared_tiny} --device cpu --world-size {nproc}" in ln, ln
    if nproc == 1:
        assert out.returncode == 2 and "Traceback" not in out.stderr
    assert not (runs / "din" / "run.json").exists()  # nothing of a run was written


@pytest.mark.parametrize("args, line", [
    (["plan", "--spec", SPEC, "--world-size", "abc"],
     "muse-rec plan: argument --world-size: invalid int value: 'abc' (see muse-rec plan --help)"),
    (["train", "--spec", SPEC, "--bogus"], "muse-rec train: unrecognized arguments: --bogus (see muse-rec train --help)"),
    (["rank", "--spec", SPEC], "muse-rec rank: the following arguments are required: --request"),
    (["frobnicate"], "muse-rec: argument COMMAND: invalid choice: 'frobnicate'"),
])
def test_usage_errors_are_one_line_naming_the_command(args, line):
    """argparse printed its usage block and then the error (7 lines), and named an unknown flag of
    `train` as the top-level command's."""
    out = cli_without_torch(*args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith(line), out.stderr


def test_no_command_is_a_usage_error_but_help_is_not():
    """`muse-rec` with no command printed the usage and exited 0, as if it had run something; argparse's
    convention for a missing required argument is exit 2. `muse-rec --help` still exits 0."""
    out = cli_without_torch()
    assert out.returncode == 2 and out.stdout == "" and out.stderr.startswith("usage: muse-rec"), out
    out = cli_without_torch("--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: muse-rec"), out


def test_a_double_dash_before_the_command_ends_the_options():
    """`muse-rec -- info` was refused ("argument COMMAND: invalid choice: '--'"): argparse took the `--` for the
    command. It ends muse-rec's own options, so the word after it is the command, whatever it starts with."""
    out = cli("--", "info", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["consistent"] is True, out.stderr[-2000:]
    for word in ("frobnicate", "--help"):  # no command, and no request for help
        out = cli_without_torch("--", word)
        assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1, out
        assert out.stderr.startswith(f"muse-rec: argument COMMAND: invalid choice: {word!r} (choose from 'info', "), out


def test_running_out_of_memory_is_one_line_not_a_traceback(monkeypatch, capsys):
    """Whatever a spec or an input sizes past the machine ends as one line with exit 2 (a
    MemoryError traceback reached the user from `plan` with model.esu.num_tiers = 1e9)."""
    from muse_rec import cli
    from muse_rec.cli import info

    def run(args):
        raise MemoryError("Unable to allocate 37.3 GiB for an array")

    monkeypatch.setattr(info, "run", run)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("muse-rec info: out of memory (Unable to allocate 37.3 GiB"), err


def test_torchs_failed_allocation_is_out_of_memory_too(monkeypatch, capsys):
    """torch reports a failed CPU allocation as a RuntimeError, not a MemoryError: `export --seq-len
    1000000000000` (8 TB of example inputs) ended in its traceback, exit 1. Any other RuntimeError
    is still a bug's traceback."""
    import torch

    from muse_rec import cli
    from muse_rec.cli import info

    monkeypatch.setattr(info, "run", lambda args: torch.zeros(2**50, dtype=torch.int8))  # 1 PiB: beyond any address space
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("muse-rec info: out of memory (") and "can't allocate" in err, err

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(info, "run", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["info"])


@pytest.mark.parametrize("args, flag", [
    (["synth", "OUT", "--preset", "tiny", "--users", str(1 << 63)], "--users"),
    (["synth", "OUT", "--preset", "tiny", "--row-group-rows", str(1 << 63)], "--row-group-rows"),
    (["prepare", "RAW", "OUT", "--batch-rows", str(1 << 63)], "--batch-rows"),
    (["baselines", "PREPARED", "--seq-len", str(1 << 63)], "--seq-len"),
    (["evaluate", "--spec", SPEC, "--out", "OUT", "--max-batches", str(-(1 << 63) - 1)], "--max-batches"),
    (["export", "--spec", SPEC, "--out", "OUT", "--row-alignment", str(1 << 70)], "--row-alignment"),
])
def test_an_integer_flag_beyond_int64_is_a_usage_error_naming_it(tmp_path, args, flag):
    """An integer flag past int64 reached NumPy / PyArrow as an OverflowError or ValueError traceback
    (synth --users 2**63, prepare --batch-rows 2**63, baselines --seq-len 2**63), exit 1."""
    out = cli_without_torch(*[str(tmp_path / a) if a.isupper() else a for a in args])  # OUT, RAW: never here
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert out.stderr.startswith(f"muse-rec {args[0]}: argument {flag}: {args[args.index(flag) + 1]}: outside the "
                                 "64-bit integers"), out.stderr


@pytest.mark.parametrize("args, flag", [
    (["baselines", "PREPARED", "--out", ""], "--out"),  # was taken as no --out: nothing written, exit 0
    (["compare", "RUN", "--out", ""], "--out"),
    (["plan", "--spec", SPEC, "--json", ""], "--json"),
    (["plan", "--spec", SPEC, "--prepared", ""], "--prepared"),  # was: the spec's vocab_sizes, silently
    (["rank", "--spec", SPEC, "--exported", "", "--request", "REQ"], "--exported"),  # was: the run's checkpoint
    (["evaluate", "--spec", SPEC, "--checkpoint", "", "--out", "OUT"], "--checkpoint"),
    (["check", ""], "prepared"),
])
def test_an_empty_path_flag_is_a_usage_error_naming_it(tmp_path, args, flag):
    """A path flag given as '' was read as the flag left out (or as the current directory)."""
    out = cli_without_torch(*[str(tmp_path / a) if a.isupper() else a for a in args])
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert out.stderr.startswith(f"muse-rec {args[0]}: argument {flag}: empty path"), out.stderr


@pytest.mark.parametrize("args, flag", [
    (["train", "--spec", "s3://bucket/x.yaml"], "--spec"),  # was "s3:/bucket/x.yaml: spec file not found"
    (["launch", "--profile", "cpu-demo", "--spec", "gs://bucket/x.yaml"], "--spec"),
    (["rank", "--spec", SPEC, "--request", "https://host/req.json"], "--request"),
    (["evaluate", "--spec", SPEC, "--checkpoint", "s3://bucket/run/checkpoints/step-1", "--out", "OUT"], "--checkpoint"),
    (["compare", "hdfs://cluster/runs/muse"], "runs"),
    # The data flags (their file:// URIs kept as given): "no meta.json - no such directory" before.
    (["prepare", "s3://bucket/taobao_mm", "OUT"], "raw"),
    (["baselines", "s3://bucket/prepared"], "prepared"),
    (["check", "gs://bucket/prepared"], "prepared"),
    (["plan", "--spec", SPEC, "--prepared", "s3://bucket/prepared"], "--prepared"),
    (["reproduce", "OUT", "--prepared", "s3://bucket/prepared", "--dry-run"], "--prepared"),
    (["reproduce", "OUT", "--raw", "hdfs://cluster/taobao_mm", "--dry-run"], "--raw"),
])
def test_a_remote_uri_where_a_local_file_is_read_is_named_as_one(tmp_path, args, flag):
    """A URI of another scheme than file:// was taken as a relative path, its '//' collapsed by Path:
    "s3:/bucket/x.yaml: spec file not found", a file the user never named. These flags read local files."""
    out = cli_without_torch(*[str(tmp_path / a) if a.isupper() else a for a in args])
    uri = next(a for a in args if "://" in a)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert out.stderr.startswith(f"muse-rec {args[0]}: argument {flag}: {uri}: not a local path"), out.stderr


def test_a_tensor_too_large_to_size_is_out_of_memory_too(monkeypatch, capsys):
    """`export --seq-len 2**62`: torch refuses to size the example inputs ("Storage size calculation
    overflowed") before allocating anything; that was a RuntimeError traceback, exit 1."""
    import torch

    from muse_rec import cli
    from muse_rec.cli import info

    monkeypatch.setattr(info, "run", lambda args: torch.zeros(1, 2**62, dtype=torch.int64))
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("muse-rec info: out of memory (") and "overflowed" in err, err


def test_compare_floors_and_no_floors_together_is_a_usage_error():
    """`compare RUN --floors F --no-floors` showed no floors and never read F, exit 0, even with F missing."""
    out = cli_without_torch("compare", "RUN", "--floors", "missing.json", "--no-floors")
    assert out.returncode == 2 and out.stderr == ("muse-rec compare: argument --no-floors: not allowed with argument "
                                                  "--floors (see muse-rec compare --help)\n"), out.stderr


@pytest.mark.parametrize("args, flag", [
    (["rank", "--spec", SPEC, "--request", "REQ", "--split", ""], "--split"),  # was: the spec's eval split
    (["reproduce", "OUT", "--dry-run", "--what", "fusion", "--scl-qualities", ""], "--scl-qualities"),  # the default
])
def test_an_empty_value_flag_is_a_usage_error_naming_it(tmp_path, args, flag):
    """A value flag given as '' was read as the flag left out: its default was used without a word."""
    out = cli_without_torch(*[str(tmp_path / a) if a.isupper() else a for a in args])
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert out.stderr.startswith(f"muse-rec {args[0]}: argument {flag}: empty value"), out.stderr


def test_export_history_bytes_are_what_the_example_inputs_allocate():
    """The bound `export` checks a history length against is the bytes its example inputs really take."""
    from muse_rec.serving.export import example_input_bytes, example_inputs

    for with_scl in (False, True):
        real = sum(t.numel() * t.element_size() for t in example_inputs(50, 8, with_scl))
        assert example_input_bytes(50, 8, with_scl) == real


def test_export_refuses_a_history_longer_than_memory_before_allocating_it(trained, tmp_path):
    """`export --seq-len 2**31` was OOM-killed after ~150 s with no message (its inputs alone are 32 GiB+);
    now refused up front naming the flag, the bytes needed and those available. 2**40 (16 TiB of ids)
    exceeds any host's memory, so the test allocates nothing large on any machine."""
    from muse_rec.serving.export import example_input_bytes

    out = cli("export", "--spec", SPEC, *trained.sets(), "--out", str(tmp_path / "ex"), "--seq-len", str(2**40))
    # DIN's program takes no SCL rows
    assert_bad_input(out, f"--seq-len {2**40}: one history of that length needs at least {example_input_bytes(2**40):,} bytes",
                     "of memory available")
    assert not (tmp_path / "ex").exists()


def test_rank_refuses_a_history_longer_than_memory_naming_the_flag(tmp_path):
    """`rank --seq-len 2**62` said only numpy's "array is too big; `arr.size * arr.dtype.itemsize` is larger than the
    maximum possible size." (after loading the model), naming neither the flag nor the value; each user's context
    holds the program's [1, L] inputs, so it is now refused as export refuses it, before anything is loaded (the
    spec's data and run do not exist here). 2**62 exceeds any host's memory: nothing large is allocated."""
    from muse_rec.serving.export import example_input_bytes

    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [2, 3]}))
    out = cli("rank", "--spec", SPEC, "--request", str(req), "--seq-len", str(2**62))
    # DIN's context holds no SCL rows
    assert_bad_input(out, f"--seq-len {2**62}: one history of that length needs at least {example_input_bytes(2**62):,} "
                     "bytes", "of memory available; serve a shorter history")


@pytest.mark.parametrize("args, flag", [
    (["train", "--spec", "FIFO"], "--spec"),
    (["evaluate", "--spec", "FIFO", "--out", "OUT"], "--spec"),
    (["export", "--spec", "FIFO", "--out", "OUT"], "--spec"),
    (["plan", "--spec", "FIFO"], "--spec"),
    (["rank", "--spec", "FIFO", "--request", "REQ"], "--spec"),
    (["rank", "--spec", SPEC, "--request", "FIFO"], "--request"),
    (["compare", "RUN", "--floors", "FIFO"], "--floors"),
    (["launch", "--profile", "cpu-demo", "--dryrun", "--spec", "FIFO"], "--spec"),
    (["launch", "--profile", "cpu-demo", "--dryrun", "--profiles-file", "FIFO"], "--profiles-file"),
])
def test_an_input_file_flag_naming_a_fifo_is_refused(tmp_path, args, flag):
    """`--spec FIFO` (and every flag naming a file read whole) blocked forever waiting for a writer."""
    os.mkfifo(tmp_path / "FIFO")
    out = cli_without_torch(*[str(tmp_path / a) if a.isupper() else a for a in args], timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert out.stderr.startswith(f"muse-rec {args[0]}: argument {flag}: {tmp_path / 'FIFO'}: a FIFO (named pipe), "
                                 "not a regular file"), out.stderr


@pytest.mark.parametrize("args, flag", [
    (["plan", "--spec", "LOOP"], "--spec"),
    (["rank", "--spec", SPEC, "--request", "LOOP"], "--request"),
    (["compare", "RUN", "--floors", "LOOP"], "--floors"),
    (["launch", "--profile", "cpu-demo", "--dryrun", "--profiles-file", "LOOP"], "--profiles-file"),
])
def test_an_input_file_flag_naming_a_symlink_loop_names_the_loop(tmp_path, args, flag):
    """A link to itself is no file to `Path.exists()`: the commands said "not found" of a path that is there."""
    (tmp_path / "LOOP").symlink_to("LOOP")
    out = cli_without_torch(*[str(tmp_path / a) if a.isupper() else a for a in args], timeout=60)
    assert_bad_input(out, f"argument {flag}: {tmp_path / 'LOOP'}: a symbolic link loop")


@pytest.mark.parametrize("args, flag", [
    (["plan", "--spec", "FILE/"], "--spec"),
    (["rank", "--spec", SPEC, "--request", "FILE/"], "--request"),
])
def test_an_input_file_flag_naming_a_file_with_a_trailing_slash_is_refused(tmp_path, args, flag):
    """`--spec din.yaml/` loaded the file (pathlib drops the slash) while `--request req.json/` failed
    as "Not a directory": both flags now refuse it alike, before any work."""
    (tmp_path / "FILE").write_text((REPO / SPEC).read_text())
    out = cli_without_torch(*[f"{tmp_path}/{a}" if a[0].isupper() else a for a in args], timeout=60)  # `/` would drop it
    assert_bad_input(out, f"argument {flag}: {tmp_path / 'FILE'}/: names the file {tmp_path / 'FILE'} as a directory")


@pytest.mark.parametrize("command, flag", [
    ("train", "--spec"), ("evaluate", "--spec"), ("evaluate", "--checkpoint"), ("export", "--spec"),
    ("export", "--checkpoint"), ("plan", "--spec"), ("rank", "--spec"), ("rank", "--checkpoint"),
    ("rank", "--exported"), ("rank", "--request"), ("compare", "runs"), ("compare", "--floors"),
    ("launch", "--spec"), ("launch", "--profiles-file"),
])
def test_a_file_uri_input_flag_names_the_local_path(tmp_path, command, flag):
    """Prepared data and every output took a file:// URI as the local path after the prefix; these input
    flags took it as a relative path (`--spec file:///abs/din.yaml`: "file:/abs/din.yaml: spec file not
    found"), and `file://` alone as a path rather than an empty one."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(f"muse_rec.cli.{command}").add_arguments(parser)
    to_value = next(a.type for a in parser._actions if flag in a.option_strings or a.dest == flag)
    assert to_value(f"file://{tmp_path / 'x'}") == str(tmp_path / "x")
    with pytest.raises(argparse.ArgumentTypeError, match="empty path"):
        to_value("file://")


def test_rank_and_compare_read_file_uris_as_the_local_paths(trained, tmp_path):
    """The same answer for file:// URIs as for the paths they name (each flag was refused: "no such
    directory", "spec file not found", "cannot read request")."""
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    uri = lambda p: f"file://{Path(p).resolve()}"  # noqa: E731
    ranked = [cli("rank", "--spec", spec, *trained.sets(), "--exported", exported, "--request", request)
              for spec, exported, request in ((str(REPO / SPEC), str(trained.exported), str(req)),
                                              (uri(REPO / SPEC), uri(trained.exported), uri(req)))]
    assert ranked[0].returncode == 0 and ranked[1].stdout == ranked[0].stdout, ranked[1].stderr[-2000:]
    checkpoint = sorted((trained.run_dir / "checkpoints").iterdir())[-1]
    out = cli("rank", "--spec", SPEC, *trained.sets(), "--checkpoint", uri(checkpoint), "--request", str(req))
    assert out.returncode == 0, out.stderr[-2000:]
    compared = [cli("compare", run, "--no-floors") for run in (str(trained.run_dir), uri(trained.run_dir))]
    assert compared[0].returncode == 0 and compared[1].stdout == compared[0].stdout, compared[1].stderr[-2000:]


def test_a_fifo_read_by_a_command_but_named_by_no_flag_is_refused(tmp_path):
    """The flags are asked before parsing; a spec's `extends:` parent and a run's metrics.json are not
    flags, and a FIFO there blocked train and compare forever (here: the 30 s timeout)."""
    os.mkfifo(tmp_path / "parent.yaml")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\n")
    out = cli_without_torch("train", "--spec", str(tmp_path / "child.yaml"), timeout=30)
    assert_bad_input(out, f"{tmp_path / 'child.yaml'}: extends: {tmp_path / 'parent.yaml'}: a FIFO (named pipe), "
                          "not a regular file")
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / "metrics.json")
    out = cli_without_torch("compare", str(tmp_path / "run"), "--no-floors", timeout=30)
    assert_bad_input(out, f"{tmp_path / 'run' / 'metrics.json'}: a FIFO (named pipe), not a regular file")


def test_read_json_object_refuses_a_fifo_instead_of_waiting_for_a_writer(tmp_path):
    from muse_rec.json_files import read_json_object

    os.mkfifo(tmp_path / "run.json")
    result = {}

    def read() -> None:
        try:
            read_json_object(tmp_path / "run.json", advice="; re-run")
        except ValueError as e:
            result["error"] = str(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # blocked on the FIFO (the old code): release it, then fail
        with open(tmp_path / "run.json", "w") as f:
            f.write("{}")
        reader.join(10)
    assert result.get("error") == f"{tmp_path / 'run.json'}: a FIFO (named pipe), not a regular file; re-run"


def test_a_model_whose_init_gives_a_non_finite_loss_is_not_told_to_lower_the_learning_rate(prepared_tiny, tmp_path):
    """`train --set model.init_std=1e30`: the ID rows (2e30) square past float32 and the first step's loss
    is NaN; the advice was "Lower the learning rate", which had not acted yet."""
    out = cli("train", "--spec", SPEC, *sets(prepared_tiny, tmp_path / "runs", ["train.max_steps=2", "model.init_std=1e30"]),
              "--device", "cpu")
    assert_bad_input(out, "from step 1 on", "not the learning rate", "model.init_std")
