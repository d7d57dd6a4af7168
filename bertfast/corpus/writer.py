"""Corpus output: shards of vectors and ids, written atomically, and the manifest.

A shard is ``shard-NNNNN.npy`` (vectors), ``shard-NNNNN.ids.jsonl`` (one JSON id a line) and,
written last, ``shard-NNNNN.json`` (count and checksums): a shard counts as finished only
when that record exists and its checksums match, so a run killed at any point resumes by
redoing the shards that were not finished. Until then, the texts of an unfinished shard that
are done are saved every so often as ``shard-NNNNN.part-KKKKK.npz`` (rows and vectors), which
a resumed run takes up. ``run.json`` holds the settings that shape the vectors; a rerun with
other settings into the same directory is refused.

Temporary files are ``.NAME.RUN.tmp``, RUN naming the run that writes them, and the run holds
``.bertfast-embed.lock`` (an advisory lock the kernel drops when the process dies): a run
deletes only its own temporaries and those of the dead run whose lock it takes over.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
RUN_SETTINGS = "run.json"
LOCK_FILE = ".bertfast-embed.lock"
OUTPUT_DTYPES = ("float32", "float16")


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes, run: str | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path`` named for ``run`` (default: this
    process), then rename it into place, so a reader (or a resumed run) sees the whole file
    or none of it."""
    tmp = path.with_name(f".{path.name}.{run or os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any, run: str | None = None) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode("utf-8"), run)


def part_files(out_dir: Path, index: int) -> list[Path]:
    """The saved parts of unfinished shard ``index``, in the order they were written."""
    return sorted(out_dir.glob(f"{shard_stem(index)}.part-*.npz"))


def write_part(
    out_dir: Path, index: int, number: int, rows: np.ndarray, vectors: np.ndarray, run: str
) -> None:
    """Save the finished ``rows`` of unfinished shard ``index`` and their vectors."""
    buffer = io.BytesIO()
    np.savez(buffer, rows=rows.astype(np.int64), vectors=vectors)
    write_atomic(out_dir / f"{shard_stem(index)}.part-{number:05d}.npz", buffer.getvalue(), run)


def read_parts(
    out_dir: Path, index: int, count: int, dim: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, int]:
    """(vectors, done) of shard ``index`` as its saved parts leave it (``done`` marks the rows
    they hold), and the number for the next part. A part that cannot be read is ignored: its
    rows are embedded again."""
    vectors = np.zeros((count, dim), dtype=dtype)
    done = np.zeros(count, dtype=bool)
    files = part_files(out_dir, index)
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as part:
                rows, values = part["rows"], part["vectors"]
        except (OSError, ValueError, KeyError, EOFError):
            continue
        fits = rows.ndim == 1 and values.shape == (len(rows), dim) and values.dtype == dtype
        if not fits or (len(rows) and (rows.min() < 0 or rows.max() >= count)):
            continue
        vectors[rows] = values
        done[rows] = True
    following = 1 + max((int(p.name.split(".part-")[1][:5]) for p in files), default=0)
    return vectors, done, following


def remove_parts(out_dir: Path, index: int) -> None:
    for path in part_files(out_dir, index):
        path.unlink(missing_ok=True)


class OutputLock:
    """``.bertfast-embed.lock`` in an output directory: held by one live run at a time.

    The file records the holder (pid, host, run id, start time) for the message another run
    gets; the hold itself is an ``flock``, which the kernel drops when the holder dies, so a
    lock left by a killed run is recognised as stale without guessing from pids."""

    def __init__(self, out_dir: Path, run: str):
        self.path = out_dir / LOCK_FILE
        self.run = run
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock, or raise ValueError naming the live holder; returns the run id of
        the dead run that held it last (its temporaries are left to delete), if any."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): unguarded, as before
            return None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ValueError(
                    f"{self.path.parent} is in use by another bertfast embed ({holder}); wait "
                    "for it to finish, or give another --output"
                ) from None
            # The holder before us may have deleted the file as we opened it: lock the file
            # that is there now.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder_record(fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run": self.run,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        run = previous.get("run")
        return run if isinstance(run, str) and run != self.run else None

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # still held: nobody else can be using it
            os.close(self._fd)
            self._fd = None


def _read_holder_record(fd: int) -> dict[str, Any]:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _read_holder(fd: int) -> str:
    record = _read_holder_record(fd)
    if not record:
        return "its lock file is being written"
    return f"pid {record.get('pid')} on {record.get('host')}, since {record.get('since')}"


def remove_temporaries(out_dir: Path, run: str) -> None:
    """Delete the temporary files a run named ``run`` left (it was killed mid-write)."""
    for path in out_dir.glob(f".*.{run}.tmp"):
        path.unlink(missing_ok=True)


def write_shard(
    out_dir: Path,
    index: int,
    vectors: np.ndarray,
    ids: Sequence[str | int],
    parquet: bool = False,
    run: str | None = None,
) -> dict[str, Any]:
    """Write one shard (vectors, ids, then its record) and return the record."""
    if len(vectors) != len(ids):
        raise ValueError(f"shard {index}: {len(vectors)} vectors but {len(ids)} ids")
    stem = shard_stem(index)
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    files = {"vectors": f"{stem}.npy", "ids": f"{stem}.ids.jsonl"}
    payloads = {
        "vectors": buffer.getvalue(),
        "ids": "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in ids).encode("utf-8"),
    }
    if parquet:
        files["parquet"] = f"{stem}.parquet"
        payloads["parquet"] = _parquet_bytes(vectors, ids)
    for key, name in files.items():
        write_atomic(out_dir / name, payloads[key], run)
    record = {
        "index": index,
        "count": len(ids),
        "files": files,
        "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in payloads.items()},
    }
    write_json_atomic(out_dir / f"{stem}.json", record, run)
    return record


def _parquet_bytes(vectors: np.ndarray, ids: Sequence[str | int]) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("--parquet needs pyarrow: pip install pyarrow") from exc
    flat = pa.array(vectors.reshape(-1))
    embedding = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    table = pa.table({"id": [str(i) for i in ids], "embedding": embedding})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def finished_shard(out_dir: Path, index: int, expected_count: int) -> dict[str, Any] | None:
    """The record of shard ``index`` if it was finished whole (count and checksums match)."""
    record_path = out_dir / f"{shard_stem(index)}.json"
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("count") != expected_count:
            return None
        for key, name in record["files"].items():
            path = out_dir / name
            if not path.is_file() or sha256_of(path) != record["sha256"][key]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged record: redo the shard
    return record


def check_run_settings(out_dir: Path, settings: dict[str, Any]) -> bool:
    """Whether ``out_dir`` already holds a run with ``settings``; refuses one with others.

    Returns False for a directory without a run (a fresh start)."""
    path = out_dir / RUN_SETTINGS
    if not path.is_file():
        return False
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read ({exc}); use a new --output directory") from None
    changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
    if changed:
        details = "; ".join(
            f"{k}: was {previous.get(k)!r}, now {settings.get(k)!r}" for k in changed
        )
        raise ValueError(
            f"{out_dir} holds embeddings made with other settings ({details}); refusing to mix "
            "vectors: rerun with the same settings, or give a new --output directory"
        )
    return True


def write_manifest(
    out_dir: Path,
    settings: dict[str, Any],
    shards: list[dict[str, Any]],
    skipped: dict[str, Any],
    extra: dict[str, Any],
    run: str | None = None,
) -> dict[str, Any]:
    """Write ``manifest.json``: what made the vectors, how many, and every shard's files."""
    manifest = {
        **extra,
        "settings": settings,
        "count": sum(s["count"] for s in shards),
        "skipped_bad_lines": skipped,
        "shards": [
            {k: s[k] for k in ("index", "count", "files", "sha256")}
            for s in sorted(shards, key=lambda s: s["index"])
        ],
    }
    write_json_atomic(out_dir / MANIFEST, manifest, run)
    return manifest


def load_embeddings(out_dir: str | os.PathLike) -> tuple[np.ndarray, list[str | int]]:
    """All vectors and ids of a finished output directory, in input order (checksums checked)."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {out_dir}: the run has not finished")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    vectors, ids = [], []
    for shard in manifest["shards"]:
        for key, name in shard["files"].items():
            if sha256_of(out_dir / name) != shard["sha256"][key]:
                raise ValueError(f"{out_dir / name}: checksum differs from the manifest's")
        vectors.append(np.load(out_dir / shard["files"]["vectors"], allow_pickle=False))
        # One id a line, split on "\n" alone: ids may hold U+2028 or U+0085, which JSON writes
        # as they are and str.splitlines() would take for line ends.
        lines = (out_dir / shard["files"]["ids"]).read_bytes().decode("utf-8").split("\n")
        ids.extend(json.loads(line) for line in lines if line)
    dim = manifest["dimension"]
    dtype = manifest["dtype"]
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype)), ids
