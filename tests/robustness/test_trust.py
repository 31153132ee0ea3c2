"""Items 7 and 9 of issue 13: artifacts are checked against their SHA-256 manifest before any pickle
in them is opened; a crafted checkpoint or export never runs its payload."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from muse_rec.integrity import MANIFEST, IntegrityError, read_digest, verify, write_manifest
from tests.conftest import REPO, error_of_call_unblocking_fifos, subprocess_env
from tests.robustness.conftest import SPEC, assert_bad_input, cli, sets, snapshot


class _Payload:
    """Unpickling this creates ``marker`` (stands for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_checkpoint(trained, tmp_path: Path) -> tuple:
    src = sorted((trained.run_dir / "checkpoints").iterdir())[-1]
    evil = tmp_path / "evil-ckpt"
    shutil.copytree(src, evil)
    marker = tmp_path / "PWNED"
    (evil / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    return src, evil, marker


def test_the_crafted_checkpoint_payload_is_live(trained, tmp_path):
    """Control: DCP itself unpickles .metadata, so loading the crafted checkpoint would run the payload."""
    _, evil, marker = _crafted_checkpoint(trained, tmp_path)
    code = ("import torch.distributed.checkpoint as dcp, sys\n"
            f"try: dcp.FileSystemReader({str(evil)!r}).read_metadata()\nexcept Exception: pass\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), timeout=120, check=True)
    assert marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "export", "rank"])
def test_tampered_checkpoint_is_refused_before_unpickling(trained, tmp_path, command):
    _, evil, marker = _crafted_checkpoint(trained, tmp_path)
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    extra = {"evaluate": ["--out", str(tmp_path / "o")], "export": ["--out", str(tmp_path / "o")],
             "rank": ["--request", str(req)]}[command]
    out = cli(command, "--spec", SPEC, *trained.sets(), "--checkpoint", str(evil), *extra)
    assert_bad_input(out, str(evil / ".metadata"), "SHA-256 differs")
    assert not marker.exists()
    assert not (tmp_path / "o").exists()


def test_forged_manifest_is_caught_by_the_pinned_digest(trained, tmp_path):
    src, evil, marker = _crafted_checkpoint(trained, tmp_path)
    write_manifest(evil)  # the attacker also rewrites SHA256SUMS.json
    pinned = read_digest(src)
    assert pinned and verify(src, pinned) == pinned
    out = cli("evaluate", "--spec", SPEC, *trained.sets(), "--checkpoint", str(evil), "--out", str(tmp_path / "o"),
              "--expect-sha256", pinned)
    assert_bad_input(out, str(evil), f"is not the expected {pinned}")
    assert not marker.exists()


# rng-0.pt bytes that are no pickle: torch's weights-only unpickler raised KeyError (a memo entry it never
# stored), IndexError (an empty stack) or EOFError, each a traceback of `train --resume` and `evaluate`.
_NOT_A_PICKLE = {"text": b"hello", "an unknown memo entry": b"\x80\x02h\xff.", "an empty stack": b"\x80\x02.",
                 "an empty file": b""}


@pytest.mark.parametrize("rng_state", ["a dict", "a tensor of another size", "a float tensor", *_NOT_A_PICKLE])
def test_a_sealed_checkpoint_with_a_foreign_rng_state_is_one_line(trained, tmp_path, rng_state):
    """A checkpoint whose manifest verifies (re-sealed) but whose rng-0.pt is no torch RNG state:
    `train --resume` ended in torch.set_rng_state's TypeError / RuntimeError traceback."""
    import torch

    runs = trained.copy_run(tmp_path / "runs")
    ck = sorted((runs / "din" / "checkpoints").iterdir())[-1]
    if rng_state in _NOT_A_PICKLE:
        (ck / "rng-0.pt").write_bytes(_NOT_A_PICKLE[rng_state])
    else:
        state = {"a dict": {"not": "a state"}, "a float tensor": torch.zeros(3)}.get(rng_state,
                                                                                  torch.zeros(7, dtype=torch.uint8))
        torch.save(state, ck / "rng-0.pt")
    write_manifest(ck)
    before = snapshot(runs / "din")
    out = cli("train", "--spec", SPEC, *sets(trained.prepared, runs, ["train.max_steps=3"]), "--device", "cpu",
              "--resume")
    # What it holds instead, for a tensor: "got Tensor" named neither its dtype nor its shape.
    got = {"a float tensor": "got a 1-D torch.float32 tensor of shape (3,)", "a dict": "got a dict"}.get(rng_state, "")
    assert_bad_input(out, f"{ck / 'rng-0.pt'}: not a torch RNG state", got)
    assert snapshot(runs / "din") == before


def test_checkpoint_without_manifest_is_refused(trained, tmp_path):
    src = sorted((trained.run_dir / "checkpoints").iterdir())[-1]
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    (bare / MANIFEST).unlink()
    out = cli("evaluate", "--spec", SPEC, *trained.sets(), "--checkpoint", str(bare), "--out", str(tmp_path / "o"))
    assert_bad_input(out, str(bare), "no SHA256SUMS.json")


def test_added_file_is_refused(trained, tmp_path):
    src = sorted((trained.run_dir / "checkpoints").iterdir())[-1]
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    (copy / "rng-7.pt").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"rng-7.pt: not listed"):
        verify(copy)


def _crafted_export(trained, tmp_path: Path) -> tuple:
    """The real export with its first weight switched to a pickled payload (a valid PT2 archive)."""
    evil = tmp_path / "evil-export"
    shutil.copytree(trained.exported, evil)
    marker = tmp_path / "PWNED-export"
    src = zipfile.ZipFile(trained.exported / "ranker.pt2")
    cfg_name = next(n for n in src.namelist() if n.endswith("weights/model_weights_config.json"))
    cfg = json.loads(src.read(cfg_name))
    meta = next(iter(cfg["config"].values()))
    meta["use_pickle"] = True  # torch.export.load then torch.load(..., weights_only=False)s the file
    target = cfg_name.rsplit("/", 1)[0] + "/" + meta["path_name"]
    with zipfile.ZipFile(evil / "ranker.pt2", "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == cfg_name:
                data = json.dumps(cfg).encode()
            elif info.filename == target:
                data = pickle.dumps(_Payload(marker))
            out.writestr(info.filename, data)
    return evil, marker


def test_the_crafted_export_payload_is_live(trained, tmp_path):
    """Control: torch.export.load of the crafted archive runs the payload."""
    evil, marker = _crafted_export(trained, tmp_path)
    code = f"import torch\ntry: torch.export.load({str(evil / 'ranker.pt2')!r})\nexcept Exception: pass\n"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), timeout=120, check=True,
                   capture_output=True)
    assert marker.exists()


def test_tampered_export_is_refused_before_torch_export_load(trained, tmp_path, monkeypatch):
    import torch

    from muse_rec.serving.export import load_program

    evil, marker = _crafted_export(trained, tmp_path)
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: pytest.fail("torch.export.load reached"))
    with pytest.raises(IntegrityError, match=r"ranker.pt2: SHA-256 differs"):
        load_program(str(evil))
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    out = cli("rank", "--spec", SPEC, *trained.sets(), "--exported", str(evil), "--request", str(req))
    assert_bad_input(out, str(evil / "ranker.pt2"), "SHA-256 differs")
    write_manifest(evil)  # a forged manifest: only the pinned digest catches it
    out = cli("rank", "--spec", SPEC, *trained.sets(), "--exported", str(evil), "--request", str(req),
              "--expect-sha256", read_digest(trained.exported))
    assert_bad_input(out, str(evil), "is not the expected")
    assert not marker.exists()


def test_export_digest_is_printed_and_pinnable(trained, tmp_path):
    digest = read_digest(trained.exported)
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    ok = cli("rank", "--spec", SPEC, *trained.sets(), "--exported", str(trained.exported), "--request", str(req),
             "--expect-sha256", digest)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert len(json.loads(ok.stdout)["scores"]) == 2
    bad = cli("rank", "--spec", SPEC, *trained.sets(), "--exported", str(trained.exported), "--request", str(req),
              "--expect-sha256", "0" * 64)
    assert_bad_input(bad, "is not the expected " + "0" * 64)


def test_truncated_program_and_bad_manifest_are_named(trained, tmp_path):
    """Even with a manifest rewritten to match (so integrity passes), the damaged file is named."""
    from muse_rec.serving.export import ExportError, load_program, read_manifest

    trunc = tmp_path / "trunc"
    shutil.copytree(trained.exported, trunc)
    prog = trunc / "ranker.pt2"
    prog.write_bytes(prog.read_bytes()[: prog.stat().st_size // 2])
    with pytest.raises(IntegrityError, match=r"ranker.pt2: SHA-256 differs"):
        load_program(str(trunc))
    write_manifest(trunc)
    with pytest.raises(ExportError, match=r"ranker.pt2: cannot load the exported program"):
        load_program(str(trunc))
    badman = tmp_path / "badman"
    shutil.copytree(trained.exported, badman)
    (badman / "manifest.json").write_text("{not json")
    write_manifest(badman)
    with pytest.raises(ExportError, match=r"manifest.json: not valid JSON"):
        read_manifest(str(badman))
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    for d, needle in ((trunc, "ranker.pt2: cannot load"), (badman, "manifest.json: not valid JSON")):
        out = cli("rank", "--spec", SPEC, *trained.sets(), "--exported", str(d), "--request", str(req))
        assert_bad_input(out, needle)


@pytest.mark.parametrize("name", ["../outside.pt2", "ABS"])
def test_program_outside_the_verified_directory_is_refused(trained, tmp_path, name):
    """SHA256SUMS.json covers the export directory only: a manifest naming a program elsewhere
    made `load_program` unpickle a file nothing had verified."""
    from muse_rec.serving.export import ExportError, load_program

    exp = tmp_path / "exp"
    shutil.copytree(trained.exported, exp)
    outside = tmp_path / "outside.pt2"
    shutil.copy(exp / "ranker.pt2", outside)  # loadable: on the old code this file was loaded
    manifest = json.loads((exp / "manifest.json").read_text())
    manifest["program"] = str(outside) if name == "ABS" else name
    (exp / "manifest.json").write_text(json.dumps(manifest))
    write_manifest(exp)  # the directory itself verifies
    with pytest.raises(ExportError, match=r"program: expected a file name inside"):
        load_program(str(exp))


def test_manifest_of_many_files_is_sha256sum_and_names_the_first_bad_file(tmp_path):
    """The files are hashed concurrently; each hash must still land on its own file, the digest
    is `sha256sum`'s listing hashed, and of two corrupted files the sorted-first is named."""
    import hashlib

    payloads = {f"d{i % 3}/__{i}_0.distcp": bytes([i]) * (i * 70_001 + 1) for i in range(12)}
    for rel, data in payloads.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    digest = write_manifest(tmp_path)
    files = json.loads((tmp_path / MANIFEST).read_text())["files"]
    assert files == {rel: hashlib.sha256(data).hexdigest() for rel, data in payloads.items()}
    listing = "".join(f"{hashlib.sha256(payloads[rel]).hexdigest()}  {rel}\n" for rel in sorted(payloads))
    assert digest == hashlib.sha256(listing.encode()).hexdigest() == verify(tmp_path)
    for rel in ("d2/__5_0.distcp", "d1/__7_0.distcp"):
        (tmp_path / rel).write_bytes(b"x" + payloads[rel][1:])
    with pytest.raises(IntegrityError, match=r"d1/__7_0\.distcp: SHA-256 differs"):
        verify(tmp_path)


def test_the_writers_lock_file_is_not_part_of_the_artifact(tmp_path):
    """An export directory keeps the `.lock` its writer held (holder info, never loaded): the next
    writer rewrites it, so it is left out of the manifest; only the top-level one is."""
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / ".lock").write_text('{"pid": 1}')
    digest = write_manifest(tmp_path)
    assert set(json.loads((tmp_path / MANIFEST).read_text())["files"]) == {"a.bin"}
    (tmp_path / ".lock").write_text('{"pid": 2}')
    assert verify(tmp_path) == digest
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".lock").write_text("x")
    with pytest.raises(IntegrityError, match=r"sub/\.lock: not listed"):
        verify(tmp_path)


# What is kept of the damaged file: a third of .metadata or of the tensors (EOFError), or half of the tensors,
# where torch's zip reader fails instead ("PytorchStreamReader failed ...": a RuntimeError that was called
# "does not fit this model", as if the spec were wrong).
_KEPT = {"metadata": 3, "tensors": 3, "tensors, half": 2}


@pytest.mark.parametrize("damage", sorted(_KEPT))
def test_a_damaged_checkpoint_with_a_matching_manifest_is_named_in_one_line(trained, tmp_path, damage):
    """Files written damaged (or a manifest rewritten after the damage) pass the integrity check;
    DCP then failed with its tracebacks on stderr and the message blamed the model ("does not fit
    this model: EOFError:"). Now: one line saying the checkpoint is damaged."""
    src = sorted((trained.run_dir / "checkpoints").iterdir())[-1]
    ck = tmp_path / "ck"
    shutil.copytree(src, ck)
    victim = ck / ".metadata" if damage == "metadata" else sorted(ck.glob("*.distcp"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // _KEPT[damage]])
    write_manifest(ck)
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    for out in (cli("rank", "--spec", SPEC, *trained.sets(), "--checkpoint", str(ck), "--request", str(req)),
                cli("evaluate", "--spec", SPEC, *trained.sets(), "--checkpoint", str(ck), "--out", str(tmp_path / "ev"),
                    "--max-batches", "1")):
        assert_bad_input(out, str(ck), "damaged, its files cannot be read")
        assert "does not fit this model" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr[-3000:]


def test_a_manifest_that_does_not_describe_its_program_is_one_line(trained, tmp_path):
    """A manifest.json whose history length is not the program's (edited, then re-hashed): the program's
    own shape guard failed with a traceback and exit 1."""
    exp = tmp_path / "exp"
    shutil.copytree(trained.exported, exp)
    manifest = json.loads((exp / "manifest.json").read_text())
    manifest["seq_len"] = manifest["seq_len"] // 2
    (exp / "manifest.json").write_text(json.dumps(manifest))
    write_manifest(exp)
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    out = cli("rank", "--spec", SPEC, *trained.sets(), "--exported", str(exp), "--request", str(req))
    assert_bad_input(out, str(exp), "refuses the inputs its manifest.json describes", "re-export")


def test_the_runs_newest_checkpoint_without_position_json_is_refused(trained, tmp_path):
    """The run's newest checkpoint lost its position.json (its SHA256SUMS.json still lists it):
    `evaluate` evaluated the older checkpoint, exit 0, no warning. A step directory is renamed into
    place only once whole, so this is damage: exit 2 naming the file, nothing written."""
    runs = trained.copy_run(tmp_path / "runs")
    ckpts = runs / "din" / "checkpoints"
    older = sorted(ckpts.iterdir())[-1]
    newest = ckpts / f"step-{int(older.name[5:]) + 1:08d}"
    shutil.copytree(older, newest)
    (newest / "position.json").unlink()
    assert "position.json" in json.loads((newest / MANIFEST).read_text())["files"]
    before = snapshot(runs / "din")
    out = cli("evaluate", "--spec", SPEC, *sets(trained.prepared, runs), "--out", str(tmp_path / "ev"))
    assert_bad_input(out, f"{newest / 'position.json'}: missing, so the checkpoint is damaged", f"remove {newest}")
    assert "evaluated" not in out.stderr and not (tmp_path / "ev").exists()
    assert snapshot(runs / "din") == before


def _outside_listing(tmp_path: Path, name: str) -> tuple:
    """A sealed directory whose manifest also lists ``name`` - a file outside it, with the right hash."""
    from muse_rec.integrity import file_sha256

    art = tmp_path / "art" / "ck"
    art.mkdir(parents=True)
    (art / "position.json").write_text("{}")
    outside = tmp_path / "art" / "run.json"
    outside.write_text('{"run_id": "r"}')
    if name == "LINK":  # a symbolic link to a directory outside: the directory's walk does not enter it
        (art / "sub").symlink_to(tmp_path / "art", target_is_directory=True)
        name = "sub/run.json"
    write_manifest(art)
    manifest = json.loads((art / MANIFEST).read_text())
    manifest["files"][str(outside) if name == "ABS" else name] = file_sha256(outside)
    (art / MANIFEST).write_text(json.dumps(manifest))
    return art, str(outside) if name == "ABS" else name


@pytest.mark.parametrize("name", ["../run.json", "ABS", "./../ck/../run.json", "LINK"])
def test_a_manifest_listing_a_path_outside_its_directory_says_so(tmp_path, name):
    """Refused before, but as "missing (listed in SHA256SUMS.json)" although the file exists."""
    art, listed = _outside_listing(tmp_path, name)
    with pytest.raises(IntegrityError) as e:
        verify(art)
    assert str(e.value).startswith(f"{art / MANIFEST}: lists {listed!r}, which names a path outside {art} ")
    assert "missing" not in str(e.value)


def test_a_symlinked_file_inside_the_directory_still_verifies(tmp_path):
    """Only names the directory's own walk does not find are resolved: a listed file that is a
    symbolic link (a copy made with `cp -s`) is read and hashed where it is, as before."""
    (tmp_path / "real.bin").write_bytes(b"weights")
    art = tmp_path / "art"
    art.mkdir()
    (art / "w.bin").symlink_to(tmp_path / "real.bin")
    digest = write_manifest(art)
    assert verify(art) == digest


def test_a_directory_that_is_no_export_is_named_as_such(trained, tmp_path):
    # A run directory passed as --exported was "not written by this version of muse_rec, or not by muse_rec
    # at all": true of no file in it, and no hint that an export was meant.
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"user": 1, "candidates": [1, 2]}))
    out = cli("rank", "--spec", SPEC, *trained.sets(), "--exported", str(trained.run_dir), "--request", str(req))
    assert_bad_input(out, f"{trained.run_dir}: not an export (no ranker.pt2, no manifest.json); it holds a training "
                          "run (run.json); pass the --out of `muse-rec export`")


def test_a_listed_file_that_is_a_dangling_symbolic_link_is_named(tmp_path):
    """A listed file replaced by a symbolic link to nothing: the directory's walk lists the link, so it
    was neither "missing" nor "not listed", and hashing it raised FileNotFoundError (a traceback, exit 1)."""
    (tmp_path / "position.json").write_text("{}")
    (tmp_path / ".metadata").write_bytes(b"m")
    write_manifest(tmp_path)
    (tmp_path / ".metadata").unlink()
    (tmp_path / ".metadata").symlink_to(tmp_path / "gone")
    with pytest.raises(IntegrityError, match=rf"^{tmp_path / '.metadata'}: cannot be read \(No such file"):
        verify(tmp_path)


def test_a_listed_file_replaced_by_a_fifo_is_refused_without_opening_it(tmp_path):
    """`rank --exported DIR` with DIR/ranker.pt2 a FIFO: hashing it blocked forever, and SIGTERM (timeout)
    did not end the command either (the hashing thread stayed blocked in open)."""
    (tmp_path / "ranker.pt2").write_bytes(b"p")
    write_manifest(tmp_path)
    (tmp_path / "ranker.pt2").unlink()
    os.mkfifo(tmp_path / "ranker.pt2")
    error = error_of_call_unblocking_fifos(lambda: verify(tmp_path), tmp_path, IntegrityError)
    assert error == f"{tmp_path / 'ranker.pt2'}: a FIFO (named pipe), not a regular file; the artifact is damaged"


@pytest.mark.parametrize("kind", ["fifo", "directory", "not utf-8"])
def test_a_manifest_that_is_no_regular_utf8_file_is_named_as_such(tmp_path, kind):
    """SHA256SUMS.json as a directory or a FIFO was reported as "no SHA256SUMS.json integrity manifest - not
    written by this version of muse_rec", which it is not; now the file and what it is are named."""
    (tmp_path / "ranker.pt2").write_bytes(b"p")
    write_manifest(tmp_path)
    manifest = tmp_path / MANIFEST
    manifest.unlink()
    if kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "directory":
        manifest.mkdir()
    else:
        manifest.write_bytes(b"\xff\xfe{}")
    expected = {"fifo": "a FIFO (named pipe), not a regular file", "directory": "cannot read (Is a directory)",
                "not utf-8": "not valid JSON ("}[kind]
    error = error_of_call_unblocking_fifos(lambda: verify(tmp_path), tmp_path, IntegrityError)
    assert error.startswith(f"{manifest}: {expected}") and error.endswith("; the artifact is damaged"), error


def test_an_exported_scorer_keeps_the_manifest_its_program_was_loaded_by(trained, tmp_path, monkeypatch):
    """`ExportedScorer` read manifest.json twice, in `load_program` and again itself: a manifest replaced
    between the two reads (a re-export into the same directory) gave a scorer whose manifest (history
    length, candidate bound, inputs) was not its program's. It is read once now."""
    from muse_rec.serving import export
    from muse_rec.serving.ranker import ExportedScorer

    exported = tmp_path / "exported"
    shutil.copytree(trained.exported, exported)
    loaded = {}
    read = export.read_manifest

    def read_then_replace(exported_dir: str):
        manifest = loaded.setdefault("manifest", read(exported_dir))
        replaced = dict(manifest, max_candidates=int(manifest["max_candidates"]) + 1)
        (exported / "manifest.json").write_text(json.dumps(replaced))  # the next reader sees another manifest
        return manifest

    monkeypatch.setattr(export, "read_manifest", read_then_replace)
    scorer = ExportedScorer(str(exported))
    assert scorer.manifest == loaded["manifest"]
    assert scorer.max_candidates == loaded["manifest"]["max_candidates"]


def test_read_digest_of_a_manifest_that_is_a_fifo_is_none_without_waiting(tmp_path):
    """`read_digest` read SHA256SUMS.json with read_text: a FIFO there blocked its caller forever."""
    os.mkfifo(tmp_path / MANIFEST)
    digests = []
    assert error_of_call_unblocking_fifos(lambda: digests.append(read_digest(tmp_path)), tmp_path, Exception) == ""
    assert digests == [None]


@pytest.mark.parametrize("method", [5, ["muse"], {"name": "muse"}])
def test_a_manifest_method_that_is_no_name_is_named(trained, tmp_path, method):
    """An edited, re-sealed manifest.json with ``"method": 5`` was refused as "holds a 5 model" by the Ranker
    (and not at all by a reader of the manifest alone); the key is checked where the manifest is read."""
    from muse_rec.serving.export import ExportError, read_manifest

    exp = tmp_path / "exp"
    shutil.copytree(trained.exported, exp)
    manifest = json.loads((exp / "manifest.json").read_text())
    manifest["method"] = method
    (exp / "manifest.json").write_text(json.dumps(manifest))
    write_manifest(exp)
    with pytest.raises(ExportError, match=rf"manifest.json: method: expected a method name, got {re.escape(repr(method))}$"):
        read_manifest(str(exp))
