"""bertfast against the CPU runtimes people pick instead: ONNX Runtime (fp32 and dynamic int8)
and OpenVINO (fp32 forced, and its default precision: bf16 where the CPU has it) through
sentence-transformers' backends, beside sentence-transformers on torch and bertfast in fp32,
int8 and bf16 (where the CPU has native bf16).

The peers' pins fight ours (the ONNX backend's optimum-onnx wants an older transformers than
sentence-transformers 6 does), so they run from a venv of their own, ``--peers-venv`` (default
benchmarks/.peers-venv, git-ignored), which this script creates with pip when it is missing.
The models are exported locally from the bundled all-MiniLM-L6-v2 into benchmarks/.peers-cache.

Every engine runs in a worker process of its own (its venv's python, ``--threads`` threads);
one driver interleaves them, one call each per rotating round (``bertfast.bench.stats``), the
worker timing its own call, until each median's 95 % interval is within ``--ci-width`` of it
or the time cap is hit. Two measurements: seconds for ``--texts`` mixed-length texts at
``--batch-size``, and batch-1 latency of one ~10-word sentence. Accuracy: each engine's min
cosine against sentence-transformers on torch in fp32. Results with intervals, the CPU model and
its ISA flags, and the load average before and after go to --output (JSON + Markdown).

Usage: python benchmarks/cpu_peers.py [--texts 1000] [--engines ...] [--setup-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cpu_common import (  # noqa: E402
    LATENCY_TEXT,
    cpu_info,
    format_interval,
    isa_line,
    load_lines,
    make_texts,
    write_results,
)

REFERENCE = "sentence-transformers torch fp32"
# engine -> (venv: "ours" or "peers", what it is)
ENGINES = {
    REFERENCE: ("peers", "sentence-transformers on torch, fp32"),
    "bertfast fp32": ("ours", "SentenceEncoder, oneDNN packed fp32 GEMMs"),
    "bertfast int8": ("ours", "SentenceEncoder(quantize='int8'): fbgemm int8 GEMMs, per token"),
    "bertfast bf16": ("ours", "SentenceEncoder(dtype=bf16): oneDNN packed bf16 GEMMs"),
    "onnxruntime fp32": ("peers", "sentence-transformers backend='onnx'"),
    "onnxruntime int8": ("peers", "export_dynamic_quantized_onnx_model (per tensor)"),
    "openvino fp32": ("peers", "backend='openvino', INFERENCE_PRECISION_HINT f32"),
    "openvino default": ("peers", "backend='openvino', its default precision"),
}
PEER_PACKAGES = ("sentence-transformers[onnx,openvino]",)


# ----------------------------------------------------------------------------- the workers


def _exported(model_dir: Path, backend: str, marker: str) -> Path:
    """A copy of the model with its ``backend`` export saved beside it (made once): each
    backend its own copy, since saving rewrites the copy's config.json."""
    from sentence_transformers import SentenceTransformer

    target = model_dir.parent / f"{model_dir.name}-{backend}"
    if not (target / marker).is_file():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(model_dir, target)
        SentenceTransformer(str(target), backend=backend).save_pretrained(str(target))
    return target


def _peer_model(engine: str, model_dir: Path, threads: int):
    """A sentence-transformers model of a peer engine, exported once into the cache."""
    from sentence_transformers import SentenceTransformer

    if engine == REFERENCE:
        return SentenceTransformer(str(model_dir), device="cpu"), {}
    if engine.startswith("onnxruntime"):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        kwargs = {"provider": "CPUExecutionProvider", "session_options": options}
        model_dir = _exported(model_dir, "onnx", "onnx/model.onnx")
        info = {"onnxruntime": onnxruntime.__version__}
        if engine.endswith("int8"):
            from sentence_transformers import export_dynamic_quantized_onnx_model

            flags = cpu_info()["isa"]
            config = "avx512_vnni" if flags["avx512_vnni"] else "avx2"
            found = sorted((model_dir / "onnx").glob(f"model_*int8_{config}.onnx"))
            if not found:
                fp32 = SentenceTransformer(
                    str(model_dir), backend="onnx", model_kwargs={"file_name": "onnx/model.onnx"}
                )
                export_dynamic_quantized_onnx_model(fp32, config, str(model_dir))
                found = sorted((model_dir / "onnx").glob(f"model_*int8_{config}.onnx"))
            kwargs["file_name"] = f"onnx/{found[0].name}"
            info["quantization_config"] = config
        else:
            kwargs["file_name"] = "onnx/model.onnx"
        model = SentenceTransformer(str(model_dir), backend="onnx", model_kwargs=kwargs)
        return model, info
    import openvino

    model_dir = _exported(model_dir, "openvino", "openvino/openvino_model.xml")
    ov_config = {"INFERENCE_NUM_THREADS": str(threads)}
    if engine == "openvino fp32":
        ov_config["INFERENCE_PRECISION_HINT"] = "f32"
    model = SentenceTransformer(
        str(model_dir), backend="openvino", model_kwargs={"ov_config": ov_config}
    )
    info = {"openvino": openvino.__version__}
    try:  # what it chose: f32, or bf16 on a CPU with it
        precision = model[0].auto_model.request.get_property("INFERENCE_PRECISION_HINT")
        info["inference_precision"] = str(precision)
    except Exception as exc:
        info["inference_precision"] = f"unknown ({type(exc).__name__})"
    return model, info


def _our_model(engine: str, threads: int):
    import torch

    from bertfast import cpu_linear
    from bertfast.sentence import SentenceEncoder

    torch.set_num_threads(threads)
    if engine == "bertfast bf16":
        reason = cpu_linear.bf16_unsupported_reason()
        if reason is not None:
            raise NotImplementedError(reason)
        return SentenceEncoder.from_pretrained("all-MiniLM-L6-v2", dtype=torch.bfloat16), {}
    quantize = "int8" if engine == "bertfast int8" else None
    return SentenceEncoder.from_pretrained("all-MiniLM-L6-v2", quantize=quantize), {}


def worker(engine: str, model_dir: Path, texts_file: Path, vectors_file: Path, threads: int):
    """Load the engine, encode the texts once (saving the vectors), then answer the driver's
    commands on stdin ("texts", "one", "quit") with the seconds of each call, one JSON a line."""
    import numpy as np

    reply = sys.stdout
    sys.stdout = sys.stderr  # libraries' prints must not reach the driver's pipe
    texts = json.loads(texts_file.read_text())
    batch_size = texts.pop()
    t0 = time.perf_counter()
    try:
        if ENGINES[engine][0] == "ours":
            model, info = _our_model(engine, threads)
        else:
            import torch

            torch.set_num_threads(threads)
            model, info = _peer_model(engine, model_dir, threads)
    except NotImplementedError as exc:
        print(json.dumps({"skip": str(exc)}), file=reply, flush=True)
        return
    vectors = np.asarray(model.encode(texts, batch_size=batch_size))
    np.save(vectors_file, vectors)
    for _ in range(3):
        model.encode([LATENCY_TEXT], batch_size=1)
    ready = {"ready": True, "load_s": time.perf_counter() - t0, "info": info}
    print(json.dumps(ready), file=reply, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        t0 = time.perf_counter()
        if command == "texts":
            model.encode(texts, batch_size=batch_size)
        else:
            model.encode([LATENCY_TEXT], batch_size=1)
        print(json.dumps({"s": time.perf_counter() - t0}), file=reply, flush=True)


# ----------------------------------------------------------------------------- the driver


def ensure_peers_venv(venv: Path, log) -> Path:
    """The peers' python, creating the venv with pip when it is missing."""
    python = venv / "bin" / "python"
    if python.is_file():
        return python
    import torch

    torch_pin = f"torch=={torch.__version__}"  # the same torch build as ours, CPU wheels
    log(f"creating {venv}: python -m venv; pip install {torch_pin} {' '.join(PEER_PACKAGES)}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, torch_pin, *PEER_PACKAGES], check=True)
    return python


def peer_versions(python: Path) -> dict:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "('sentence-transformers', 'transformers', 'torch', 'onnxruntime', 'openvino', "
        "'optimum', 'optimum-onnx', 'optimum-intel')}))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-300:]}


class Worker:
    """A running worker process: send a command, read back the seconds it took."""

    def __init__(self, engine: str, python: Path, args, cache: Path) -> None:
        self.engine = engine
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p
        )
        self.vectors = cache / f"vectors-{engine.replace(' ', '-')}.npy"
        command = [str(python), str(Path(__file__).resolve()), "--worker", engine]
        command += ["--model-dir", str(cache / "all-MiniLM-L6-v2"), "--texts-file"]
        command += [str(cache / "texts.json"), "--vectors-file", str(self.vectors)]
        command += ["--threads", str(args.threads)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.hello: dict | None = None

    def wait_ready(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"worker {self.engine} exited with status {code} before ready")
        self.hello = json.loads(line)
        self._pause()
        return self.hello

    # Between its calls a worker is stopped (SIGSTOP): the thread pools of an idle engine
    # (ONNX Runtime's and OpenVINO's spin after each run) then take no CPU from the engine
    # being timed, which on two cores made the torch engines 20-25x slower in one run.
    def _pause(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def _resume(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def call(self, command: str) -> float:
        self._resume()
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        self._pause()
        if not line:
            raise RuntimeError(f"worker {self.engine} died")
        return json.loads(line)["s"]

    def close(self) -> None:
        self._resume()
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()


def drive(args) -> None:
    import numpy as np

    from bertfast.bench.stats import (
        load_average,
        load_warning,
        ratio_summary,
        run_interleaved,
        summarise,
    )
    from bertfast.model_dirs import resolve_model_dir

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    python = ensure_peers_venv(Path(args.peers_venv), log)
    if args.setup_only:
        log(f"peers venv ready: {python}")
        return
    cache = Path(args.cache)
    model_dir = cache / "all-MiniLM-L6-v2"
    if not (model_dir / "modules.json").is_file():
        shutil.copytree(resolve_model_dir("all-MiniLM-L6-v2"), model_dir, dirs_exist_ok=True)
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    texts = make_texts(vocab, args.texts, seed=0)
    (cache / "texts.json").write_text(json.dumps([*texts, args.batch_size]))

    load_before = load_average()
    workers: dict[str, Worker] = {}
    skipped, infos = {}, {}
    for engine in args.engines:
        venv = ENGINES[engine][0]
        w = Worker(engine, Path(sys.executable) if venv == "ours" else python, args, cache)
        try:
            hello = w.wait_ready()  # one at a time: exports and loads do not overlap
        except RuntimeError as exc:
            skipped[engine] = str(exc)
            log(f"skip {engine}: {exc}")
            continue
        if "skip" in hello:
            skipped[engine] = hello["skip"]
            log(f"skip {engine}: {hello['skip']}")
            w.close()
            continue
        workers[engine], infos[engine] = w, hello["info"]
        log(f"{engine}: ready in {hello['load_s']:.1f} s {hello['info'] or ''}")
    try:
        reference = np.load(workers[REFERENCE].vectors) if REFERENCE in workers else None
        accuracy = {}
        for engine, w in workers.items():
            if engine != REFERENCE and reference is not None:
                accuracy[engine] = float((np.load(w.vectors) * reference).sum(axis=1).min())
                log(f"{engine}: min cosine {accuracy[engine]:.6f} against {REFERENCE}")

        def measure(command: str, cap: float, min_rounds: int):
            return run_interleaved(
                {e: None for e in workers},
                ci_width=args.ci_width,
                min_rounds=min_rounds,
                max_rounds=5000,
                time_cap_s=cap,
                time_call=lambda engine, r: workers[engine].call(command),
            )

        log(f"throughput: {len(texts)} texts at batch {args.batch_size}, interleaved")
        throughput = measure("texts", args.time_cap, 6)
        log(f"throughput: {throughput.rounds} rounds ({throughput.stopped})")
        log("batch 1: one sentence a call, interleaved")
        batch1 = measure("one", args.latency_cap, 30)
        log(f"batch 1: {batch1.rounds} rounds ({batch1.stopped})")
    finally:
        for w in workers.values():
            w.close()
    load_after = load_average()
    warning = load_warning(load_before, load_after, own_threads=args.threads)
    if warning:
        log(f"warning: {warning}")

    def table(samples):
        return {e: summarise(t, args.ci_width).to_dict() for e, t in samples.items()}

    def vs(samples, base):
        if base not in samples:
            return {}
        return {
            e: ratio_summary(samples[base], t, args.ci_width).to_dict()
            for e, t in samples.items()
            if e != base
        }

    import platform

    result = {
        "cpu": cpu_info(),
        "python": platform.python_version(),
        "threads": args.threads,
        "texts": len(texts),
        "batch_size": args.batch_size,
        "ci_width": args.ci_width,
        "load_average": {"before": load_before, "after": load_after, "warning": warning},
        "peer_versions": peer_versions(python),
        "engines": {e: ENGINES[e][1] for e in args.engines},
        "engine_info": infos,
        "skipped": skipped,
        "min_cosine_vs_reference": accuracy,
        "throughput": {
            "rounds": throughput.rounds,
            "stopped": throughput.stopped,
            "seconds": table(throughput.samples),
            "speedup_vs_reference": vs(throughput.samples, REFERENCE),
            "speedup_vs_bertfast_fp32": vs(throughput.samples, "bertfast fp32"),
            "samples_s": throughput.samples,
        },
        "batch1": {
            "rounds": batch1.rounds,
            "stopped": batch1.stopped,
            "seconds": table(batch1.samples),
            "speedup_vs_reference": vs(batch1.samples, REFERENCE),
            "speedup_vs_bertfast_fp32": vs(batch1.samples, "bertfast fp32"),
        },
    }
    import torch

    result["bertfast_versions"] = {"torch": torch.__version__}
    markdown = render(result)
    write_results(Path(args.output), result, markdown)
    print("\n".join(markdown))


def render(result: dict) -> list[str]:
    tp, b1 = result["throughput"], result["batch1"]
    peers = ", ".join(f"{k} {v}" for k, v in result["peer_versions"].items())
    lines = [
        f"# CPU runtimes side by side: all-MiniLM-L6-v2, {result['texts']} mixed-length texts, "
        f"batch {result['batch_size']}, {result['threads']} threads per engine",
        "",
        f"CPU: {isa_line(result['cpu'])}. Peers' venv: {peers}; bertfast's torch "
        f"{result['bertfast_versions']['torch']}.",
        "",
        *load_lines(result["load_average"]),
        "",
        f"One worker process per engine, interleaved by one driver (one call each per rotating "
        f"round) until each median's 95 % interval is within {100 * result['ci_width']:.0f} % of "
        f"it or the time cap: throughput {tp['rounds']} rounds ({tp['stopped']}), batch 1 "
        f"{b1['rounds']} rounds ({b1['stopped']}). Figures: median [95 % interval]; × is the "
        "paired per-round ratio against bertfast fp32 (> 1: that engine is faster).",
        "",
        "| engine | seconds for all texts | texts/s | × bertfast fp32 | batch-1 p50 ms | "
        "batch-1 × bertfast fp32 | min cosine vs ST fp32 | samples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in result["engines"]:
        t, lat = tp["seconds"].get(name), b1["seconds"].get(name)
        if t is None and lat is None:
            continue
        base_t = tp["speedup_vs_bertfast_fp32"].get(name)
        base_l = b1["speedup_vs_bertfast_fp32"].get(name)
        # speedup_vs_bertfast_fp32 is fp32's time over this engine's: > 1 means faster.
        rate = f"{result['texts'] / t['median']:.0f}" if t else "–"
        cos = result["min_cosine_vs_reference"].get(name)
        info = result["engine_info"].get(name, {})
        note = f" ({info['inference_precision']})" if "inference_precision" in info else ""
        lines.append(
            f"| {name}{note} | {format_interval(t) if t else '–'} | {rate} | "
            f"{format_interval(base_t) if base_t else '–'} | "
            f"{format_interval(lat, 1e3) if lat else '–'} | "
            f"{format_interval(base_l) if base_l else '–'} | "
            f"{'reference' if cos is None else f'{cos:.5f}'} | "
            f"{'/'.join(str(x['samples']) for x in (t, lat) if x)} |"
        )
    for name, reason in result["skipped"].items():
        lines += ["", f"Skipped {name}: {reason}."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000, help="texts to encode (1000)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (32)")
    parser.add_argument("--threads", type=int, default=2, help="threads per engine (2)")
    parser.add_argument("--ci-width", type=float, default=0.03, help="interval / median (0.03)")
    parser.add_argument("--time-cap", type=float, default=240.0, help="throughput seconds (240)")
    parser.add_argument("--latency-cap", type=float, default=60.0, help="batch-1 seconds (60)")
    parser.add_argument(
        "--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES), metavar="ENGINE"
    )
    parser.add_argument("--peers-venv", default=str(HERE / ".peers-venv"))
    parser.add_argument("--cache", default=str(HERE / ".peers-cache"), help="exported models")
    parser.add_argument("--output", default=str(HERE / "results" / "cpu-peers"))
    parser.add_argument("--setup-only", action="store_true", help="only create the peers' venv")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", help=argparse.SUPPRESS)
    parser.add_argument("--vectors-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(
            args.worker,
            Path(args.model_dir),
            Path(args.texts_file),
            Path(args.vectors_file),
            args.threads,
        )
        return
    if REFERENCE not in args.engines:
        args.engines.insert(0, REFERENCE)  # the accuracy reference
    drive(args)


if __name__ == "__main__":
    main()
