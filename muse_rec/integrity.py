"""SHA-256 manifests of artifact directories (checkpoints, exported programs), checked before loading.

DCP checkpoints (``.metadata``) and ``torch.export`` programs contain pickles, and unpickling
runs code. So every loader in muse_rec checks the directory against its manifest *before* it
opens any pickle:

    <artifact dir>/SHA256SUMS.json   {"format": "muse_rec.sha256/1", "files": {"rel/path": "<hex>"},
                                      "digest": "<hex>"}

``digest`` is the artifact's identity: SHA-256 of the sorted ``"<sha256>  <rel/path>\\n"`` lines
(the `sha256sum` format) of every file in it but the writer's ``.lock`` (muse_rec.dirlock: holder
info, never loaded). The manifest alone detects corruption, truncation,
a swapped or added file; it cannot stop someone who hands you a whole directory and writes a
matching manifest. For that, pin the digest you got from a trusted place (the training run's
log, `run.json`, the export's stdout): ``--expect-sha256 <digest>`` recomputes it from the files
and refuses anything else. See README "Trust model".
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from muse_rec.dirlock import LOCK_FILE
from muse_rec.json_files import read_json_object, refuse_special_file

MANIFEST = "SHA256SUMS.json"
FORMAT = "muse_rec.sha256/1"
_CHUNK = 1 << 20
_DAMAGED = "; the artifact is damaged"


class IntegrityError(ValueError):
    """An artifact does not match its manifest or the pinned digest; nothing was unpickled."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def hash_files(root: Path, rels: List[str]) -> Dict[str, str]:
    """``{rel: sha256}`` of the files, hashed concurrently.

    One SHA-256 stream is one core (~1.5 GB/s with SHA extensions, far less without), and a DCP
    checkpoint is one large file per rank (tens of GB each at the release's vocabulary), so one
    thread per file keeps the cores busy: hashlib releases the GIL while it hashes a block.
    """
    workers = max(1, min(len(rels), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else (os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(rels, pool.map(lambda rel: file_sha256(root / rel), rels)))


def _artifact_files(root: Path) -> Iterable[str]:
    for dirpath, _, names in os.walk(root):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/")
            # The lock the writing command held (muse_rec.dirlock): holder info, never loaded.
            if rel not in (MANIFEST, LOCK_FILE):
                yield rel


def _digest(files: Dict[str, str]) -> str:
    listing = "".join(f"{sha}  {rel}\n" for rel, sha in sorted(files.items()))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def write_manifest(root: str | os.PathLike) -> str:
    """Hash every file under ``root`` into ``root/SHA256SUMS.json`` (atomically); returns the digest."""
    root = Path(root)
    files = hash_files(root, sorted(_artifact_files(root)))
    digest = _digest(files)
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "files": files, "digest": digest}, indent=1))
    os.replace(tmp, root / MANIFEST)
    return digest


def read_digest(root: str | os.PathLike) -> Optional[str]:
    """The digest recorded in ``root``'s manifest (None when there is none); not verified."""
    try:  # read_json_object: a FIFO there blocked the caller forever
        return read_json_object(Path(root) / MANIFEST).get("digest")
    except ValueError:  # missing, unreadable, not JSON or not an object
        return None


def _outside(root: Path, rel: str, resolve: bool = False) -> bool:
    """``rel`` (a name listed in ``root``'s manifest) is absolute or has a ``..`` part; with
    ``resolve``, also one whose place, symbolic links followed, is outside ``root``."""
    if not isinstance(rel, str) or os.path.isabs(rel) or ".." in rel.replace(os.sep, "/").split("/"):
        return True
    if not resolve:
        return False
    real = os.path.realpath(root)
    return os.path.commonpath([real, os.path.realpath(root / rel)]) != real


def verify(root: str | os.PathLike, expect_sha256: Optional[str] = None) -> str:
    """Check every file of ``root`` against its manifest (and ``expect_sha256``); returns the digest.

    Raises:
        IntegrityError: naming the artifact and the first file that differs, is missing, cannot be
            read (e.g. a dangling symbolic link) or is not listed; a listed name outside the directory (absolute, with a ``..`` part, or
            reached through a symbolic link); or the pinned digest that does not match. Nothing
            is unpickled here.
    """
    root = Path(root)
    if not root.is_dir():
        raise IntegrityError(f"{root}: {'is a file, not a directory' if root.exists() else 'no such directory'}")
    mpath = root / MANIFEST
    if not mpath.exists():
        raise IntegrityError(f"{root}: no {MANIFEST} integrity manifest - not written by this version of "
                             "muse_rec, or not by muse_rec at all; refusing to unpickle it (see README 'Trust model')")
    # A FIFO, a directory or a file that cannot be read there is named as such (a directory was called
    # "no manifest"); a FIFO is refused before it is opened.
    manifest = read_json_object(mpath, IntegrityError, advice=_DAMAGED)
    listed = manifest.get("files")
    if manifest.get("format") != FORMAT or not isinstance(listed, dict):
        what = f"format {manifest.get('format')!r}" if manifest.get("format") != FORMAT else "no 'files' object"
        raise IntegrityError(f"{mpath}: unreadable integrity manifest ({what})")
    present = set(_artifact_files(root))
    # A name the directory's own walk did not find may lie outside it (through a symbolic link to a
    # directory); one that was found is read where it is, as before.
    outside = next((rel for rel in sorted(listed) if _outside(root, rel, resolve=rel not in present)), None)
    if outside is not None:
        raise IntegrityError(f"{mpath}: lists {outside!r}, which names a path outside {root} (a manifest covers "
                             "its own directory only: tampered with, or not written by muse_rec)")
    extra = sorted(present - set(listed))
    if extra:
        raise IntegrityError(f"{root / extra[0]}: not listed in {MANIFEST} (added after the artifact was written)")
    missing = sorted(set(listed) - present)
    if missing:
        raise IntegrityError(f"{root / missing[0]}: missing (listed in {MANIFEST})")
    for rel in sorted(listed):  # opening a FIFO to hash it blocked the load forever (even SIGTERM waited on it)
        refuse_special_file(root / rel, IntegrityError, _DAMAGED)
    try:
        actual = hash_files(root, sorted(listed))
    except OSError as e:  # a listed name that is a dangling symbolic link, or a file that cannot be read
        raise IntegrityError(f"{e.filename or root}: cannot be read ({e.strerror or e}){_DAMAGED}") from None
    for rel in sorted(listed):
        if actual[rel] != listed[rel]:
            raise IntegrityError(f"{root / rel}: SHA-256 differs from {MANIFEST} (corrupted or tampered with)")
    digest = _digest(actual)
    if expect_sha256 is not None and digest != expect_sha256.strip().lower():
        raise IntegrityError(f"{root}: SHA-256 digest {digest} is not the expected {expect_sha256}")
    return digest
