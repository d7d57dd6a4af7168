"""Corpus output: shards of vectors and ids, written atomically, and the manifest.

A shard is ``shard-NNNNN.npy`` (vectors), ``shard-NNNNN.ids.jsonl`` (one JSON id a line) and,
written last, ``shard-NNNNN.json`` (count and checksums): a shard counts as finished only
when that record exists and its checksums match, so a run killed at any point resumes by
redoing the shards that were not finished. ``run.json`` holds the settings that shape the
vectors; a rerun with other settings into the same directory is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
RUN_SETTINGS = "run.json"
OUTPUT_DTYPES = ("float32", "float16")


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place, so a
    reader (or a resumed run) sees the whole file or none of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def write_shard(
    out_dir: Path,
    index: int,
    vectors: np.ndarray,
    ids: Sequence[str | int],
    parquet: bool = False,
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
        write_atomic(out_dir / name, payloads[key])
    record = {
        "index": index,
        "count": len(ids),
        "files": files,
        "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in payloads.items()},
    }
    write_json_atomic(out_dir / f"{stem}.json", record)
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
    write_json_atomic(out_dir / MANIFEST, manifest)
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
        lines = (out_dir / shard["files"]["ids"]).read_text(encoding="utf-8").splitlines()
        ids.extend(json.loads(line) for line in lines)
    dim = manifest["dimension"]
    dtype = manifest["dtype"]
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype)), ids
