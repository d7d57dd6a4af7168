"""Corpus embedding (bertfast embed --input): vectors equal sentence-transformers' encode, in
input order, whatever the format; resuming after a kill; torchrun ranks equal one process;
every kind of bad input named by file and line, or counted with --skip-bad-lines."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bertfast.corpus import BadInputError, EmbedOptions, embed_corpus, load_embeddings
from bertfast.corpus.readers import BadLines, read_records
from bertfast.sentence import SentenceEncoder
from tests.helpers import assert_close
from tests.sentence_fixtures import sentence_transformers_dir

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "search index vector corpus shard token batch model layer query answer a the of and "
    "éclair naïve 東京 données über straße quickly embedding cluster nearest neighbour"
).split()


def make_texts(n: int, seed: int = 0, longest: int = 60) -> list[str]:
    """Texts of widely spread lengths (1 to ``longest`` words), in shuffled order."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(int(rng.paretovariate(1.2)) % longest + 1))
        for _ in range(n)
    ]


def write_text(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def write_jsonl(path: Path, texts: list[str], ids=None) -> Path:
    ids = ids if ids is not None else [f"doc-{i}" for i in range(len(texts))]
    rows = [
        json.dumps({"id": i, "text": t, "extra": [1]}, ensure_ascii=False)
        for i, t in zip(ids, texts)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def run_cli(*args: str, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bertfast", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        **popen,
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_dir) -> Path:
    """A random 2-layer sentence-transformers model (mean pooling, no Normalize)."""
    return sentence_transformers_dir(tmp_path_factory.mktemp("tiny") / "st", minilm_dir)


@pytest.fixture(scope="module")
def tiny_st(tiny_dir):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(tiny_dir), device="cpu")


@pytest.fixture(scope="module")
def tiny_encoder(tiny_dir):
    return SentenceEncoder.from_pretrained(tiny_dir, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    texts = make_texts(230, seed=1)
    folder = tmp_path_factory.mktemp("corpus")
    return write_jsonl(folder / "corpus.jsonl", texts), texts


def embed(encoder, inputs, output, **kwargs):
    options = EmbedOptions(
        inputs=[str(p) for p in inputs],
        output=str(output),
        model=str(kwargs.pop("model")),
        device="cpu",
        backend="torch",
        progress=False,
        **kwargs,
    )
    return embed_corpus(options, encoder)


def test_vectors_equal_sentence_transformers_in_input_order(
    tiny_dir, tiny_st, tiny_encoder, corpus, tmp_path
):
    path, texts = corpus
    # A small token budget: many batches, each of a different length bucket.
    manifest = embed(
        tiny_encoder,
        [path],
        tmp_path / "out",
        model=tiny_dir,
        id_field="id",
        shard_size=64,
        batch_tokens=300,
    )
    vectors, ids = load_embeddings(tmp_path / "out")
    expected = tiny_st.encode(texts, batch_size=16)
    assert ids == [f"doc-{i}" for i in range(len(texts))]
    assert vectors.dtype == np.float32 and vectors.shape == expected.shape
    assert_close(torch.from_numpy(vectors), torch.from_numpy(expected), atol=2e-5, what="tiny")
    assert manifest["count"] == len(texts) and manifest["dimension"] == 32
    assert manifest["pooling"] == "mean" and manifest["normalized"] is False
    assert [s["count"] for s in manifest["shards"]] == [64, 64, 64, 38]
    assert manifest["skipped_bad_lines"] == {"count": 0, "lines": []}


def test_order_follows_the_input_whatever_the_lengths(tiny_dir, tiny_encoder, corpus, tmp_path):
    _, texts = corpus
    shuffled = list(range(len(texts)))
    random.Random(3).shuffle(shuffled)
    a = write_text(tmp_path / "a.txt", texts)
    b = write_text(tmp_path / "b.txt", [texts[i] for i in shuffled])
    embed(tiny_encoder, [a], tmp_path / "a", model=tiny_dir, shard_size=1000)
    embed(tiny_encoder, [b], tmp_path / "b", model=tiny_dir, shard_size=1000)
    va, ids = load_embeddings(tmp_path / "a")
    vb, _ = load_embeddings(tmp_path / "b")
    assert ids[:2] == [f"{a}:1", f"{a}:2"]
    assert_close(torch.from_numpy(vb), torch.from_numpy(va[shuffled]), atol=2e-5, what="order")


def test_formats_agree_and_carry_ids(tiny_dir, tiny_encoder, tmp_path):
    texts = make_texts(20, seed=2) + ['with "quotes", commas\tand a tab']
    csv_path = tmp_path / "c.csv"
    for name, delimiter in (("c.csv", ","), ("c.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter=delimiter)
            writer.writerow(["key", "body"])
            writer.writerows([[f"k{i}", t] for i, t in enumerate(texts)])
    jsonl = write_jsonl(tmp_path / "j.jsonl", texts, ids=list(range(len(texts))))
    kw = {"model": tiny_dir, "shard_size": 8}
    embed(tiny_encoder, [jsonl], tmp_path / "j", id_field="id", **kw)
    embed(tiny_encoder, [csv_path], tmp_path / "c", text_field="body", id_field="key", **kw)
    embed(tiny_encoder, [tmp_path / "c.tsv"], tmp_path / "t", text_field="body", **kw)
    vj, ij = load_embeddings(tmp_path / "j")
    vc, ic = load_embeddings(tmp_path / "c")
    vt, it = load_embeddings(tmp_path / "t")
    assert ij == list(range(len(texts))) and ic == [f"k{i}" for i in range(len(texts))]
    assert it == [f"{tmp_path / 'c.tsv'}:{i + 2}" for i in range(len(texts))]
    np.testing.assert_array_equal(vj, vc)
    np.testing.assert_array_equal(vj, vt)


def test_normalize_and_float16(tiny_dir, tiny_st, tiny_encoder, corpus, tmp_path):
    path, texts = corpus
    manifest = embed(
        tiny_encoder,
        [path],
        tmp_path / "n",
        model=tiny_dir,
        normalize=True,
        output_dtype="float16",
    )
    vectors, _ = load_embeddings(tmp_path / "n")
    expected = tiny_st.encode(texts, normalize_embeddings=True)
    assert vectors.dtype == np.float16 and manifest["dtype"] == "float16"
    assert manifest["normalized"] is True
    assert_close(torch.from_numpy(vectors), torch.from_numpy(expected), atol=1e-3, what="fp16")


def test_minilm_equals_sentence_transformers(minilm_dir, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    texts = make_texts(24, seed=4, longest=400)  # some beyond max_seq_length 256
    path = write_text(tmp_path / "in.txt", texts)
    encoder = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2", backend="torch", device="cpu")
    manifest = embed(
        encoder,
        [path],
        tmp_path / "out",
        model="all-MiniLM-L6-v2",
        shard_size=16,
        batch_tokens=2048,
    )
    vectors, _ = load_embeddings(tmp_path / "out")
    expected = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    assert_close(torch.from_numpy(vectors), torch.from_numpy(expected), atol=2e-5, what="MiniLM")
    assert manifest["dimension"] == 384 and manifest["normalized"] is True
    assert manifest["model"] == "all-MiniLM-L6-v2" and manifest["max_length"] == 256


# ---------------------------------------------------------------------- resume


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*"))}


def test_resume_redoes_only_unfinished_shards(tiny_dir, tiny_encoder, corpus, tmp_path, capsys):
    path, _ = corpus
    kw = {"model": tiny_dir, "shard_size": 50}
    embed(tiny_encoder, [path], tmp_path / "whole", **kw)
    out = tmp_path / "cut"
    embed(tiny_encoder, [path], out, **kw)
    # What a kill while writing shard 2 leaves: its vectors half written to a temporary file
    # named for the run, which still names itself in the lock file; no record, no manifest.
    for p in out.glob("shard-00002*"):
        p.unlink()
    (out / ".bertfast-embed.lock").write_text(json.dumps({"pid": 1, "run": "deadbeef0001"}))
    (out / ".shard-00002.npy.deadbeef0001.tmp").write_bytes(b"partial")
    # Temporaries of someone else (another program, another run) are not this run's to delete.
    others = [out / ".notes.txt.tmp", out / ".shard-00002.npy.feedface0002.tmp"]
    for other in others:
        other.write_bytes(b"not ours")
    (out / "manifest.json").unlink()
    (out / "shard-00004.npy").write_bytes(b"damaged")  # a checksum that no longer matches
    capsys.readouterr()
    embed(tiny_encoder, [path], out, **kw)
    assert "2 shard(s) written, 3 already finished" in capsys.readouterr().err
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "whole")
    assert sorted(out.glob(".*.tmp")) == sorted(others)
    assert not (out / ".bertfast-embed.lock").exists()  # released at the end
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    assert json.loads((out / "manifest.json").read_text()) == whole


def test_resume_after_a_kill_equals_an_uninterrupted_run(tiny_dir, tiny_encoder, tmp_path, capsys):
    """A killed process leaves finished shards; the command run again (here in this process)
    resumes after them."""
    from bertfast.cli import main

    texts = make_texts(600, seed=5)
    path = write_text(tmp_path / "in.txt", texts)
    args = [
        "embed",
        "--input",
        str(path),
        "--model",
        str(tiny_dir),
        "--device",
        "cpu",
        "--shard-size",
        "120",
        "--batch-tokens",
        "40",  # tiny batches: a slow run to kill
    ]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertfast", *args, "--output", str(out)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not (out / "shard-00000.json").exists() and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "manifest.json").exists()
    finished = sorted(p.name for p in out.glob("shard-*.json"))
    assert 1 <= len(finished) < 5
    fast = ["--batch-tokens", "4096"]  # the batch size is not a setting: resuming may change it
    capsys.readouterr()
    assert main([*args[:-2], *fast, "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{len(finished)} already finished" in err, err
    assert "texts/s" in err and "tokens/s" in err
    embed(tiny_encoder, [path], tmp_path / "whole", model=tiny_dir, shard_size=120)
    a, ids_a = load_embeddings(out)
    b, ids_b = load_embeddings(tmp_path / "whole")
    assert ids_a == ids_b and len(ids_a) == len(texts)
    # Shards done before the kill used other batches: equal to rounding, not bit for bit.
    assert_close(torch.from_numpy(a), torch.from_numpy(b), atol=2e-5, what="resumed")


def test_a_live_run_holds_the_output_directory(tiny_dir, tiny_encoder, tmp_path):
    from bertfast.corpus.writer import OutputLock

    path = write_text(tmp_path / "in.txt", ["one", "two"])
    out = tmp_path / "out"
    out.mkdir()
    holder = OutputLock(out, "otherrun0001")
    assert holder.acquire() is None
    try:
        with pytest.raises(
            ValueError, match=rf"is in use by another bertfast embed \(pid {os.getpid()} "
        ):
            embed(tiny_encoder, [path], out, model=tiny_dir)
    finally:
        holder.release()
    assert embed(tiny_encoder, [path], out, model=tiny_dir)["count"] == 2


def test_an_interrupted_run_keeps_its_work_and_resumes_byte_for_byte(
    tiny_dir, corpus, tmp_path, capsys, monkeypatch, python_sigint
):
    """Ctrl-C in the middle of the only shard: the texts done so far are saved (here after every
    batch, --save-every being tiny), and the rerun embeds only the rest; the files equal an
    uninterrupted run's."""
    from bertfast.cli import main
    from bertfast.corpus.embed import CorpusEmbedder

    path, texts = corpus
    args = ["embed", "--input", str(path), "--model", str(tiny_dir), "--device", "cpu"]
    args += ["--backend", "torch", "--shard-size", "1000", "--batch-tokens", "400"]
    assert main([*args, "--output", str(tmp_path / "whole")]) == 0
    forward, calls = CorpusEmbedder._forward, []

    def interrupted(self, batch):
        calls.append(len(batch.positions))
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, batch)

    monkeypatch.setattr(CorpusEmbedder, "_forward", interrupted)
    out = tmp_path / "cut"
    capsys.readouterr()
    assert main([*args, "--output", str(out), "--save-every", "1e-9"]) == 130
    err = capsys.readouterr().err
    kept = sum(calls[:3])  # batch 3 was computed, batch 4 was not
    assert 0 < kept < len(texts)
    assert (
        f"interrupted: 0 finished shard(s) and {kept} text(s) of shard-00000 kept in {out}; run "
        "the same command again to resume" in err
    ), err
    assert len(list(out.glob("shard-00000.part-*.npz"))) == 3 and not list(out.glob("*.npy"))
    resumed = []

    def counted(self, batch):
        resumed.append(len(batch.positions))
        return forward(self, batch)

    monkeypatch.setattr(CorpusEmbedder, "_forward", counted)
    assert main([*args, "--output", str(out)]) == 0
    assert sum(resumed) + kept == len(texts)  # the saved batches are not embedded again
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "whole")
    assert not list(out.glob("*.part-*"))


def test_a_rewritten_input_is_refused_even_with_its_size_and_time(tiny_dir, tiny_encoder, tmp_path):
    path = write_text(tmp_path / "in.txt", ["one", "two"])
    embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir)
    stat = path.stat()
    write_text(path, ["owl", "two"])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ValueError, match=r"other settings \(inputs: was .*'sha256'"):
        embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir)


def test_changed_settings_are_refused(tiny_dir, tiny_encoder, corpus, tmp_path):
    path, _ = corpus
    embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir)
    with pytest.raises(ValueError, match=r"other settings \(max_length: was 512, now 64\)"):
        embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir, max_length=64)
    with pytest.raises(ValueError, match="normalize"):
        embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir, normalize=True)
    # int8 and fp32 vectors never mix in one output (the model's dtype cannot tell them apart).
    with pytest.raises(ValueError, match=r"quantize: was None, now 'int8'"):
        embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir, quantize="int8")
    # The same settings again: everything is already there.
    manifest = embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir)
    assert manifest["count"] == 230


def test_progress_redraws_on_a_terminal_and_logs_otherwise(capsys):
    from bertfast.corpus.embed import Progress

    bar = Progress(total=100, tty=True)
    bar.advance(10, 120)
    bar.close()
    err = capsys.readouterr().err
    assert err.startswith("\r") and "10/~100 texts" in err and "tokens/s" in err and "ETA" in err
    log = Progress(total=100, tty=False)
    log.advance(10, 120)
    log.advance(10, 120)  # within LOG_EVERY_S of the first line: not written
    log.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "\r" not in "".join(lines) and "20/~100" in lines[-1]


# ---------------------------------------------------------------------- torchrun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def torchrun_output(tiny_dir, corpus, tmp_path_factory):
    """One 2-process torchrun of the command (gloo, CPU), started once for the module."""
    path, _ = corpus
    out = tmp_path_factory.mktemp("torchrun") / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "bertfast",
        "embed",
        "--input",
        str(path),
        "--output",
        str(out),
        "--model",
        str(tiny_dir),
        "--device",
        "cpu",
        "--backend",
        "torch",
        "--id-field",
        "id",
        "--shard-size",
        "40",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


def test_torchrun_two_ranks_equal_one_process(
    torchrun_output, tiny_dir, tiny_encoder, corpus, tmp_path
):
    out, result = torchrun_output
    path, texts = corpus
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run (OMP_NUM_THREADS=1): GEMM splits by threads
    try:
        embed(tiny_encoder, [path], tmp_path / "one", model=tiny_dir, id_field="id", shard_size=40)
    finally:
        torch.set_num_threads(threads)
    two, ids2 = load_embeddings(out)
    one, ids1 = load_embeddings(tmp_path / "one")
    assert ids2 == ids1 == [f"doc-{i}" for i in range(len(texts))]
    np.testing.assert_array_equal(two, one)  # the same batches: equal bit for bit
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and len(manifest["shards"]) == 6
    assert "[rank 1/2]" in result.stderr  # each rank did its own slice


# ---------------------------------------------------------------------- bad input


def _records(path, **kwargs):
    return list(read_records([str(path)], **kwargs))


BAD_LINES = [
    # (file name, content, keyword arguments, what the message says)
    ("a.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', {}, r"a.jsonl:2: no field 'text'"),
    (
        "a.jsonl",
        b'{"text": "ok"}\n{"text": 3}\n',
        {},
        r"a.jsonl:2: field 'text' is int 3, not text",
    ),
    ("a.jsonl", b'{"text": null}\n', {}, r"a.jsonl:1: field 'text' is NoneType null"),
    ("a.jsonl", b'{"text": ["x"]}\n', {}, r"a.jsonl:1: field 'text' is list"),
    ("a.jsonl", b'{"text": "ok"}\n{"text": "ok\n', {}, r"a.jsonl:2: not valid JSON"),
    ("a.jsonl", b'{"text": "ok"}\n[1, 2]\n', {}, r"a.jsonl:2: expected a JSON object, got list"),
    ("a.jsonl", b'{"text": "ok"}\n\n{"text": "b"}\n', {}, r"a.jsonl:2: blank line"),
    ("a.jsonl", b'{"text": "  "}\n', {}, r"a.jsonl:1: field 'text' is empty"),
    ("a.jsonl", b'{"text": "ok"}\n', {"id_field": "id"}, r"a.jsonl:1: no id field 'id'"),
    (
        "a.jsonl",
        b'{"text": "ok", "id": 1.5}\n',
        {"id_field": "id"},
        r"a.jsonl:1: id field 'id' is float",
    ),
    ("a.txt", b"fine\ncaf\xe9\n", {}, r"a.txt:2: not valid UTF-8 \(byte 0xe9 at column 4\)"),
    ("a.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', {}, r"a.jsonl:2: not valid UTF-8"),
    ("a.txt", b"fine\n\nmore\n", {}, r"a.txt:2: the line is empty"),
    ("a.csv", b"id,text\n1,ok\n2,ok,extra\n", {}, r"a.csv:3: 3 columns, the header has 2"),
    ("a.csv", b'id,text\n1,ok\n2,"never closed\n', {}, r"a.csv:3: not valid CSV"),
    ("a.csv", b"id,text\n1,ok\n2,caf\xe9\n", {}, r"a.csv:3: not valid UTF-8 \(byte 0xe9\)"),
    # A lone surrogate (valid JSON, not Unicode) fails the tokenizer, and an id at write time.
    (
        "a.jsonl",
        b'{"text": "ok"}\n{"text": "a\\ud800b"}\n',
        {},
        r"a.jsonl:2: field 'text' holds a lone surrogate U\+D800 at character 2",
    ),
    (
        "a.jsonl",
        b'{"text": "ok", "id": "x\\udc00"}\n',
        {"id_field": "id"},
        r"a.jsonl:1: id field 'id' holds a lone surrogate U\+DC00",
    ),
]


@pytest.mark.parametrize("name,content,kwargs,message", BAD_LINES)
def test_a_bad_line_is_named_or_counted(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=message) as info:
        _records(path, **kwargs)
    assert "--skip-bad-lines" in str(info.value)
    bad = BadLines()
    try:
        records = _records(path, bad=bad, **kwargs)
    except BadInputError as exc:  # every line bad: the file holds nothing to embed
        assert "holds no text" in str(exc)
        records = []
    assert bad.count == 1 and re.search(message, bad.examples[0])
    assert all(r.text.strip() for r in records)


def test_csv_keeps_line_breaks_inside_quoted_fields(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b'\xef\xbb\xbfid,text\r\n1,"first line\r\nsecond line"\r\n2,next\r\n')
    records = _records(path)
    assert [r.text for r in records] == ["first line\r\nsecond line", "next"]
    assert [r.id for r in records] == [f"{path}:2", f"{path}:4"]  # a record's first line
    assert [r.id for r in _records(path, id_field="id")] == ["1", "2"]
    tsv = tmp_path / "a.tsv"
    tsv.write_bytes(b'text\n"a\nb"\nc\n')
    assert [(r.text, r.id) for r in _records(tsv)] == [("a\nb", f"{tsv}:2"), ("c", f"{tsv}:4")]


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "missing.txt", "does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: (d / "empty.txt", (d / "empty.txt").write_bytes(b""))[0], "is empty"),
        (
            lambda d: (d / "h.csv", (d / "h.csv").write_bytes(b"id,body\n1,x\n"))[0],
            "no column 'text'",
        ),
    ],
)
def test_a_bad_file_is_named(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(BadInputError, match=message):
        _records(path, bad=BadLines())  # skipping lines does not skip files


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "locked.txt"
    path.write_text("x\n")
    path.chmod(0)
    with pytest.raises(BadInputError, match="cannot be read"):
        _records(path)


def test_skipped_lines_are_counted_in_the_manifest(tiny_dir, tiny_st, tiny_encoder, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "one"}\n{"text": 2}\nnot json\n{"text": "two"}\n{"t\xff": 1}\n')
    with pytest.raises(BadInputError, match=r"in.jsonl:2: field 'text' is int"):
        embed(tiny_encoder, [path], tmp_path / "strict", model=tiny_dir)
    manifest = embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir, skip_bad_lines=True)
    assert manifest["count"] == 2 and manifest["skipped_bad_lines"]["count"] == 3
    assert [m.split(":")[-2] for m in manifest["skipped_bad_lines"]["lines"]] == ["2", "3", "5"]
    vectors, ids = load_embeddings(tmp_path / "o")
    assert ids == [f"{path}:1", f"{path}:4"]
    assert_close(torch.from_numpy(vectors), torch.from_numpy(tiny_st.encode(["one", "two"])), 2e-5)


def test_command_errors_name_the_problem(tiny_dir, tmp_path, capsys):
    from bertfast.cli import main

    def error(*args: str) -> str:
        capsys.readouterr()
        assert main(list(args)) == 2
        return capsys.readouterr().err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "x"}\n')
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    err = error("embed", "--input", str(bad), "--output", str(tmp_path / "o"), *model)
    assert f"bertfast embed: error: {bad}:2: no field 'text'" in err
    assert "--shard-size only apply to corpus mode" in error("embed", "hi", "--shard-size", "3")
    assert "--input needs --output" in error("embed", "--input", str(bad))
    assert "not both" in error("embed", "hi", "--input", str(bad), "--output", "o")
    plain = write_text(tmp_path / "p.txt", ["x"])
    err = error("embed", "--input", str(plain), "--output", "o", "--id-field", "id")
    assert "needs JSON Lines or CSV/TSV input" in err
    err = error("embed", "--input", str(plain), "--output", "o", "--batch-tokens", "0")
    assert "--batch-tokens must be a positive int, got 0" in err
    err = error("embed", "--input", str(plain), "--output", "o", "--max-length", "9999", *model)
    assert "--max-length 9999 exceeds the model's 512 positions" in err


def test_ids_with_unicode_line_separators_load_back(tiny_dir, tiny_encoder, tmp_path):
    ids = ["a\u2028b", "c\x85d", "e\u2029f"]  # JSON writes these unescaped
    path = write_jsonl(tmp_path / "in.jsonl", ["one", "two", "three"], ids)
    embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir, id_field="id")
    vectors, loaded = load_embeddings(tmp_path / "o")
    assert loaded == ids and len(vectors) == 3


def test_a_very_long_line_is_cut_before_tokenizing(tiny_dir, tiny_encoder, tmp_path, monkeypatch):
    """Only the first max_length tokens count: the tokenizer never sees the whole 600,000
    characters, and the vector is the one of the whole text truncated."""
    from bertfast.tokenizer import BertTokenizer

    texts = ["short one", "corpus  shard\tvector " * 30_000]
    path = write_text(tmp_path / "in.txt", texts)
    with monkeypatch.context() as m:
        m.setattr(tiny_encoder, "max_seq_length", 128)
        expected = tiny_encoder.encode(texts, convert_to_numpy=True)  # tokenizes all of it
    seen, call = [], BertTokenizer.__call__

    def spy(self, text, *args, **kwargs):
        seen.extend(len(t) for t in ([text] if isinstance(text, str) else text))
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(BertTokenizer, "__call__", spy)
    embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir, max_length=128)
    monkeypatch.undo()
    assert max(seen) < 16 * 128 * 4  # the cut is looked for in 2,048, then 8,192 characters
    vectors, _ = load_embeddings(tmp_path / "o")
    assert_close(torch.from_numpy(vectors), torch.from_numpy(expected), atol=2e-5, what="cut")


def test_outputs_and_models_that_cannot_be_used_are_one_line(tiny_dir, tmp_path, capsys):
    from bertfast.cli import main

    def error(*args: str) -> str:
        capsys.readouterr()
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        return err

    plain = write_text(tmp_path / "p.txt", ["x"])
    corpus = ["embed", "--input", str(plain), "--model", str(tiny_dir), "--device", "cpu"]
    err = error(*corpus, "--output", str(plain))
    assert f"--output {str(plain)!r} is a file; give a directory" in err
    err = error(*corpus, "--output", str(plain / "sub"))
    assert f"cannot be created: {str(plain)!r} is a file" in err
    if os.path.isdir("/sys"):  # sysfs refuses a new directory even to root
        read_only = "/sys/bertfast-out"
    else:  # elsewhere, a directory without write permission
        (tmp_path / "ro").mkdir(mode=0o555)
        read_only = str(tmp_path / "ro" / "out")
    err = error(*corpus, "--output", read_only)
    assert f"--output {read_only!r} cannot be created" in err or "is not writable" in err
    jsonl = write_jsonl(tmp_path / "some_file.jsonl", ["x"])
    message = f"model {str(jsonl)!r} is a file, not a model directory"
    assert message in error("embed", "hello", "--model", str(jsonl), "--device", "cpu")
    assert message in error(*corpus[:3], "--output", str(tmp_path / "o"), "--model", str(jsonl))
    serve = ["serve", "--model", str(jsonl), "--port", "0", "--device", "cpu"]
    assert message in error(*serve)


def test_text_arguments_that_are_not_utf8_are_named(tiny_dir, capsys):
    from bertfast.cli import main

    # How Python hands over the argument bytes b"caf\xe9": as a lone surrogate.
    assert main(["embed", "ok", "caf\udce9", "--model", str(tiny_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "text argument 2 is not valid UTF-8 (byte 0xe9 at character 4)" in err, err


def test_parquet_needs_pyarrow_or_writes_it(tiny_dir, tiny_encoder, tmp_path):
    path = write_text(tmp_path / "in.txt", ["one", "two words"])
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(ImportError, match="--parquet needs pyarrow: pip install pyarrow"):
            embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir, parquet=True)
        return
    manifest = embed(tiny_encoder, [path], tmp_path / "o", model=tiny_dir, parquet=True)
    table = pq.read_table(tmp_path / "o" / manifest["shards"][0]["files"]["parquet"])
    vectors, ids = load_embeddings(tmp_path / "o")
    assert table.column("id").to_pylist() == ids
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist()), vectors)
