"""The compile report: every Triton kernel at every launch configuration its launcher picks for
BERT's shapes, compiled for sm_80 (A100) and sm_90a (H100/H200) on this machine, no GPU needed,
with the compiler's own numbers (registers, spill bytes, shared memory, resident blocks per SM,
wgmma or mma.sync); and the CUDA C++ kernels of csrc/ beside them (nvcc, same columns).

The launchers are asked, not imitated: each case calls the real ``launch`` / ``launch_backward``
of ``bertfast/triton/<op>.py`` on meta tensors inside ``bertfast.triton.target.record_launches``
for the card's capability, and the recorded launches are specialised and compiled the way
Triton's own launch path does (``triton.compile`` for ``GPUTarget("cuda", 80 or 90, 32)``).
Resources come from the cubin (``cuobjdump -res-usage``, shipped in the triton wheel).

    python -m bertfast.compile_report                  # the full matrix, both archs
    python -m bertfast.compile_report --matrix default --check   # what CI gates

Writes ``benchmarks/results/compile/report.json`` and ``report.md`` (``--out`` elsewhere).
Results are cached by a hash of each kernel's source and everything its compile depends on, in
that JSON: regenerating after an unrelated change compiles nothing new.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "compile"


@dataclasses.dataclass(frozen=True)
class Arch:
    """What limits residency on one SM of a card of this architecture."""

    name: str
    capability: tuple[int, int]
    shared_per_block: int  # the opt-in maximum of dynamic + static shared memory, bytes
    shared_per_sm: int
    registers_per_sm: int = 65536
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    shared_reserved_per_block: int = 1024  # the driver's per-block reservation


ARCHS = {
    80: Arch("sm_80", (8, 0), 163 * 1024, 164 * 1024),
    90: Arch("sm_90a", (9, 0), 227 * 1024, 228 * 1024),
}


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    hidden: int
    heads: int
    intermediate: int
    vocab: int = 30522
    positions: int = 512


MODELS = {
    "minilm": Model("minilm", 384, 12, 1536),  # all-MiniLM-L6-v2: head dim 32
    "base": Model("base", 768, 12, 3072),  # head dim 64
    "large": Model("large", 1024, 16, 4096),  # head dim 64
    "d128": Model("d128", 1024, 8, 4096),  # head dim 128 (no preset: the kernels allow it)
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One use of the kernels: a model's layer in a mode, dtype and layout."""

    model: str
    mode: str  # "inference" (the model in dtype) or "training" (autocast over fp32 weights)
    dtype: str  # "bf16" / "fp16": the model's dtype, or autocast's
    seq: int  # the longest sequence (the attention block tables key on it)
    layout: str = "packed"  # "packed" (the default, cu_seqlens) or "padded" (key-padding mask)
    fused_epilogues: bool = False
    dropout: bool = False
    batch: int = 32

    @property
    def label(self) -> str:
        parts = [self.model, self.mode, self.dtype, f"s{self.seq}", self.layout]
        if self.fused_epilogues:
            parts.append("fused")
        if self.dropout:
            parts.append("dropout")
        return " ".join(parts)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def default_cases() -> list[Case]:
    """What inference and training run without options (packed layout, separate epilogues),
    at MiniLM, BERT-base and BERT-large shapes, at both attention block-table lengths,
    in bf16 and fp16; training with BERT's dropout."""
    return [
        Case(model, mode, dtype, seq, dropout=mode == "training")
        for model in ("minilm", "base", "large")
        for mode in ("inference", "training")
        for dtype in ("bf16", "fp16")
        for seq in (64, 128, 512)
    ]


def full_cases() -> list[Case]:
    """The default cases and every option: head dim 128, the padded layout, fused GEMM
    epilogues, training without dropout, the tuned block table's lengths."""
    seqs = sorted({64, 128, 384, 512, *_tuned_lengths()})
    cases = [
        Case(model, mode, dtype, seq, layout, fused, dropout)
        for model in MODELS
        for mode in ("inference", "training")
        for dtype in ("bf16", "fp16")
        for seq in seqs
        for layout in ("packed", "padded")
        for fused in (False, True)
        for dropout in ((False, True) if mode == "training" else (False,))
    ]
    return list(dict.fromkeys(default_cases() + cases))


def _tuned_lengths() -> list[int]:
    from bertfast.triton import attention

    path = attention.TUNED_BLOCKS_PATH
    table = json.loads(path.read_text()) if path.is_file() else {}
    return [entry["seq"] for entry in table.get("entries", [])]


# --- recording what the launchers would run -----------------------------------------------------


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def record_case(case: Case, capability: tuple[int, int]) -> list:
    """The launches the Triton launchers issue for one layer (and the embeddings) of ``case``
    on a card of ``capability``: forwards, and in training every backward."""
    from bertfast.triton import (
        attention,
        bias_gelu,
        bias_residual_layer_norm,
        embedding_layer_norm,
        linear_epilogue,
        target,
    )

    model = MODELS[case.model]
    half = DTYPES[case.dtype]
    training = case.mode == "training"
    # Inference runs the model in half precision; training runs autocast over fp32 weights:
    # GEMM outputs in half beside fp32 parameters and an fp32 residual stream.
    param = torch.float32 if training else half
    stream = param
    h, i, b, s = model.hidden, model.intermediate, case.batch, case.seq
    tokens = b * s
    p = 0.1 if case.dropout else 0.0
    seed = 1234567  # a generic seed: not 1 and not a multiple of 16 (no specialisation)
    drop = dict(dropout_p=p, seed=seed) if p else {}
    rows = (tokens,) if case.layout == "packed" else (b, s)

    def vec(n: int, dtype: torch.dtype = param) -> torch.Tensor:
        return _meta(n, dtype=dtype)

    with target.record_launches(capability) as launches:
        ids = _meta(*rows, dtype=torch.int64)
        word, position, token_type = (
            _meta(model.vocab, h, dtype=param),
            _meta(model.positions, h, dtype=param),
            _meta(2, h, dtype=param),
        )
        emb_args = (ids, ids, ids, word, position, token_type, vec(h), vec(h), 1e-12)
        embedded = embedding_layer_norm.launch(*emb_args, **drop)
        if training:
            embedding_layer_norm.launch_backward(
                embedded, *emb_args[:7], 1e-12, **drop
            )  # fmt: skip

        qkv = _meta(*rows, 3 * h, dtype=half)
        if case.layout == "packed":
            cu, mask = _meta(b + 1, dtype=torch.int32), None
        else:
            cu, mask = None, _meta(b, s, dtype=torch.bool)
        if training:
            out, lse = attention.launch_with_lse(qkv, model.heads, mask, cu, s, **drop)
            attention.launch_backward(out, qkv, out, lse, model.heads, mask, cu, s, **drop)
        else:
            attention.launch(qkv, model.heads, mask, cu, s)

        x = _meta(*rows, h, dtype=half)
        up = _meta(*rows, i, dtype=half)
        residual = _meta(*rows, h, dtype=stream)
        if case.fused_epilogues:
            for width, inner, epilogue in (
                (3 * h, h, "bias"),
                (i, h, "bias_gelu"),
                (h, i, "bias_residual_layer_norm"),
            ):
                inp = _meta(*rows, inner, dtype=half)
                weight, bias = _meta(width, inner, dtype=half), vec(width, half)
                norm = epilogue == "bias_residual_layer_norm"
                extra = (residual, vec(h), vec(h)) if norm else (None, None, None)
                norm_drop = drop if norm else {}
                out = linear_epilogue.launch(
                    inp, weight, bias, epilogue, *extra, 1e-12, **norm_drop
                )  # fmt: skip
                if training:
                    linear_epilogue.launch_backward(
                        out, inp, weight, bias, epilogue, extra[0], extra[1], 1e-12, **norm_drop
                    )
        else:
            gelu = bias_gelu.launch(up, vec(i), "none")
            normed = bias_residual_layer_norm.launch(
                x, vec(h), residual, vec(h), vec(h), 1e-12, **drop
            )
            if training:
                bias_gelu.launch_backward(gelu, up, vec(i), "none")
                bias_residual_layer_norm.launch_backward(
                    normed, x, vec(h), residual, vec(h), 1e-12, **drop
                )
    return launches


# --- compiling ----------------------------------------------------------------------------------


def _compile_inputs(launch, capability: tuple[int, int]) -> dict:
    """What ``triton.compile`` gets for this launch, specialised as Triton's launch path
    specialises it (JITFunction.run: the binder, then _pack_args)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    target = GPUTarget("cuda", capability[0] * 10 + capability[1], 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.meta, debug=False)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, options
    )
    return dict(
        module=kernel.fn.__module__,
        name=kernel.fn.__name__,
        arch=target.arch,
        signature=signature,
        constexprs=constexprs,
        attrs=attrs,
        # extern_libs names libdevice by its path in this install: left out, so the key (and
        # the committed report's cache) does not depend on where the checkout lives.
        options={k: v for k, v in options.__dict__.items() if _plain(v) and k != "extern_libs"},
        source_key=kernel.cache_key,
    )


def _plain(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, tuple, list))


def compile_key(inputs: dict) -> str:
    import triton

    text = json.dumps(
        [
            inputs["source_key"],
            inputs["arch"],
            sorted(inputs["signature"].items()),
            sorted((repr(k), repr(v)) for k, v in inputs["constexprs"].items()),
            sorted((repr(k), repr(v)) for k, v in inputs["attrs"].items()),
            sorted((k, repr(v)) for k, v in inputs["options"].items()),
            triton.__version__,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _tool(name: str) -> str:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    found = str(bundled) if bundled.is_file() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found (the triton wheel ships one; is triton installed?)")
    return found


_RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(cubin: bytes) -> dict[str, dict[str, int]]:
    """Per function in a cubin: registers, stack and local bytes per thread, static shared."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    usage, function = {}, None
    for line in text.splitlines():
        if line.strip().startswith("Function "):
            function = line.strip()[len("Function ") :].rstrip(":")
        elif function and (match := _RESOURCE.search(line)):
            reg, stack, shared, local = map(int, match.groups())
            usage[function] = dict(registers=reg, stack=stack, static_shared=shared, local=local)
    return usage


def _compile_worker(inputs: dict) -> dict:
    """Compile one specialised kernel for its arch and read its resources (a pool worker)."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default: fused FMAs
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(inputs["module"]), inputs["name"])
    arch = inputs["arch"]
    source = ASTSource(kernel, inputs["signature"], inputs["constexprs"], inputs["attrs"])
    start = time.perf_counter()
    try:
        compiled = triton.compile(
            source, target=GPUTarget("cuda", arch, 32), options=dict(inputs["options"])
        )
    except Exception as exc:  # the report records it; --check fails on it
        first = str(exc).strip().splitlines()
        return dict(error=f"{type(exc).__name__}: {first[0] if first else ''}"[:300])
    seconds = time.perf_counter() - start
    usage = resource_usage(compiled.asm["cubin"])
    (resources,) = usage.values()
    ptx = compiled.asm["ptx"]
    mma = "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else "none"
    return dict(
        resources,
        dynamic_shared=int(compiled.metadata.shared),
        mma=mma,
        compile_seconds=round(seconds, 2),
    )


def occupancy(arch: Arch, registers: int, warps: int, shared: int) -> dict:
    """Resident blocks per SM and what limits them: registers (allocated per warp in units of
    256), shared memory (with the per-block reservation), warps, the block cap."""
    per_warp = -(-registers * 32 // 256) * 256
    limits = {
        "registers": (arch.registers_per_sm // per_warp) // warps if per_warp else 10**9,
        "shared": arch.shared_per_sm // (shared + arch.shared_reserved_per_block)
        if shared
        else 10**9,
        "warps": arch.max_warps_per_sm // warps,
        "blocks": arch.max_blocks_per_sm,
    }
    blocks = min(limits.values())
    return dict(
        blocks_per_sm=blocks,
        limited_by=min(limits, key=limits.get),
        warps_per_sm=blocks * warps,
    )


def _row_problems(row: dict, arch: Arch) -> list[str]:
    if "error" in row:
        return [f"compile error: {row['error']}"]
    problems = []
    if row["stack"] or row["local"]:
        problems.append(f"spills: {row['stack']} B stack, {row['local']} B local per thread")
    if row["shared"] > arch.shared_per_block:
        problems.append(f"shared memory {row['shared']} B > {arch.shared_per_block} B")
    if row.get("blocks_per_sm", 1) == 0:
        problems.append("no block fits on an SM")
    return problems


def triton_rows(
    cases: list[Case], arches: list[int], cache: dict, jobs: int, log=print
) -> list[dict]:
    """One row per distinct compiled kernel (kernel, specialisation, config, arch), naming the
    cases that launch it; compiled in ``jobs`` processes, rows found in ``cache`` reused."""
    rows: dict[str, dict] = {}
    pending: dict[str, dict] = {}
    for arch_number in arches:
        arch = ARCHS[arch_number]
        for case in cases:
            for launch in record_case(case, arch.capability):
                inputs = _compile_inputs(launch, arch.capability)
                key = compile_key(inputs)
                if key not in rows:
                    meta = launch.meta
                    rows[key] = dict(
                        key=key,
                        kernel=inputs["name"],
                        arch=arch.name,
                        config={
                            k: v
                            for k, v in meta.items()
                            if k.isupper() or k in ("num_warps", "num_stages")
                        },
                        num_warps=inputs["options"].get("num_warps", 4),
                        num_stages=inputs["options"].get("num_stages", 3),
                        dtypes=_arg_dtypes(launch),
                        cases=[],
                    )
                    if key in cache and "error" not in cache[key]:
                        rows[key].update(_measured(cache[key]))
                    else:
                        pending[key] = inputs
                if case.label not in rows[key]["cases"]:
                    rows[key]["cases"].append(case.label)
    if pending:
        log(f"compile report: compiling {len(pending)} kernels ({len(rows) - len(pending)} cached)")
        start = time.perf_counter()
        with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
            for key, result in zip(pending, pool.map(_compile_worker, pending.values())):
                rows[key].update(result)
        log(f"compile report: compiled in {time.perf_counter() - start:.0f} s")
    for row in rows.values():
        arch = ARCHS[80 if row["arch"] == "sm_80" else 90]
        if "error" not in row:
            row["shared"] = row["dynamic_shared"] + row["static_shared"]
            row.update(occupancy(arch, row["registers"], row["num_warps"], row["shared"]))
        row["problems"] = _row_problems(row, arch)
    return sorted(rows.values(), key=lambda r: (r["kernel"], r["arch"], r["key"]))


_MEASURED = ("registers", "stack", "local", "static_shared", "dynamic_shared", "mma", "error")


def _measured(row: dict) -> dict:
    return {k: row[k] for k in (*_MEASURED, "compile_seconds") if k in row}


def _arg_dtypes(launch) -> str:
    dtypes = sorted(
        {str(a.dtype).removeprefix("torch.") for a in launch.args if isinstance(a, torch.Tensor)}
    )
    return "/".join(dtypes)


# --- the CUDA C++ kernels -----------------------------------------------------------------------

# Threads per block of each CUDA kernel family as its launcher sets them (csrc/): the MMA
# attention tile is 4 warps, the fp32 attention tile 8, bias+GELU 128 threads; the row kernels
# (LayerNorms) launch up to 256 threads at hidden <= 2048 (RowLaunch in common.cuh).
CUDA_THREADS = {
    "attention_mma_kernel": 128,
    "attention_f32_kernel": 256,
    "bias_gelu_kernel": 128,
    "bias_residual_layer_norm_kernel": 256,
    "embedding_layer_norm_kernel": 256,
}


def cuda_rows(arches: list[int], log=print) -> list[dict]:
    """Every kernel instantiated in csrc/*.cu, compiled with nvcc for each arch (flags of
    CMakeLists.txt), with cuobjdump's resource numbers."""
    nvcc = shutil.which("nvcc") or next(
        (str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/nvcc"), reverse=True)), None
    )
    if nvcc is None:
        log("compile report: nvcc not found, CUDA C++ kernels left out")
        return []
    filt = shutil.which("cu++filt", path=str(Path(nvcc).parent))
    rows = []
    for arch_number in arches:
        arch = ARCHS[arch_number]
        code = "sm_90a" if arch_number == 90 else "sm_80"
        for source in sorted((ROOT / "csrc").glob("*.cu")):
            with tempfile.TemporaryDirectory() as folder:
                cubin = Path(folder) / "k.cubin"
                subprocess.run(
                    [nvcc, "-cubin", f"-arch={code}", "-O3", "-std=c++17", "-lineinfo",
                     f"-I{ROOT / 'csrc'}", "-o", str(cubin), str(source)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                usage = resource_usage(cubin.read_bytes())
                sass = subprocess.run(
                    [_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True
                ).stdout
            mma = "HGMMA" if "HGMMA" in sass else "HMMA" if "HMMA" in sass else "none"
            for mangled, resources in usage.items():
                name = mangled
                if filt:
                    name = subprocess.run(
                        [filt, mangled], capture_output=True, text=True
                    ).stdout.strip()
                family = next((f for f in CUDA_THREADS if f in name), None)
                row = dict(
                    resources,
                    kernel=name,
                    source=f"csrc/{source.name}",
                    arch=arch.name,
                    mma=mma,
                    shared=resources["static_shared"],
                    num_warps=CUDA_THREADS.get(family, 128) // 32,
                )
                row.update(occupancy(arch, row["registers"], row["num_warps"], row["shared"]))
                row["problems"] = _row_problems(row, arch)
                rows.append(row)
    return rows


# --- the report ---------------------------------------------------------------------------------


def versions() -> dict:
    import triton

    info = dict(
        triton=triton.__version__, torch=torch.__version__, python=platform.python_version()
    )
    nvcc = shutil.which("nvcc")
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        info["nvcc"] = out.strip().splitlines()[-1] if out.strip() else "?"
    ptxas = subprocess.run([_tool("ptxas"), "--version"], capture_output=True, text=True).stdout
    info["triton_ptxas"] = ptxas.strip().splitlines()[-1] if ptxas.strip() else "?"
    return info


def load_cache(path: Path) -> dict:
    """Compiled rows of an earlier report by key (only under the same triton version, which
    the key includes)."""
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    return {row["key"]: row for row in report.get("triton", []) if "key" in row}


def markdown(report: dict) -> str:
    lines = [
        "# Compile report",
        "",
        f"Generated by `python -m bertfast.compile_report --matrix {report['matrix']}` "
        f"(triton {report['versions']['triton']}, {report['versions'].get('nvcc', 'no nvcc')}).",
        "Registers and stack/local bytes are per thread (stack or local > 0: spills); shared is "
        "bytes per block (dynamic + static); blocks/SM is what registers, shared memory and "
        "warps allow together; limits: sm_80 163 KiB shared per block, sm_90a 227 KiB.",
        "",
        "## Triton kernels",
        "",
        "| kernel | arch | config | dtypes | regs | stack | local | shared | warps | "
        "blocks/SM (limit) | MMA | cases | problems |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for row in report["triton"]:
        config = ", ".join(
            f"{k}={v}"
            for k, v in row["config"].items()
            if k not in ("num_warps", "num_stages") and v not in (False, None)
        )
        config += f", stages={row['num_stages']}"
        cases = "; ".join(row["cases"][:3]) + (
            f"; +{len(row['cases']) - 3} more" if len(row["cases"]) > 3 else ""
        )
        if "error" in row:
            lines.append(
                f"| {row['kernel']} | {row['arch']} | {config} | {row['dtypes']} | "
                f"| | | | {row['num_warps']} | | | {cases} | {row['error']} |"
            )
            continue
        lines.append(
            f"| {row['kernel']} | {row['arch']} | {config} | {row['dtypes']} | "
            f"{row['registers']} | {row['stack']} | {row['local']} | {row['shared']} | "
            f"{row['num_warps']} | {row['blocks_per_sm']} ({row['limited_by']}) | {row['mma']} | "
            f"{cases} | {'; '.join(row['problems']) or '-'} |"
        )
    lines += [
        "",
        "## CUDA C++ kernels (csrc/)",
        "",
        "| kernel | source | arch | regs | stack | local | shared | warps | blocks/SM (limit) "
        "| MMA (SASS) | problems |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for row in report["cuda"]:
        lines.append(
            f"| `{row['kernel']}` | {row['source']} | {row['arch']} | {row['registers']} | "
            f"{row['stack']} | {row['local']} | {row['shared']} | {row['num_warps']} | "
            f"{row['blocks_per_sm']} ({row['limited_by']}) | {row['mma']} | "
            f"{'; '.join(row['problems']) or '-'} |"
        )
    problems = report["summary"]["problems"]
    lines += ["", f"Problems: {len(problems)}."] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def build_report(
    matrix: str, arches: list[int], cache: dict, jobs: int, with_cuda: bool, log=print
) -> dict:
    cases = default_cases() if matrix == "default" else full_cases()
    rows = triton_rows(cases, arches, cache, jobs, log)
    cuda = cuda_rows(arches, log) if with_cuda else []
    problems = [
        f"{row['kernel']} on {row['arch']} ({_where(row)}): " + "; ".join(row["problems"])
        for row in rows + cuda
        if row["problems"]
    ]
    return dict(
        matrix=matrix,
        versions=versions(),
        arches=[ARCHS[a].name for a in arches],
        summary=dict(
            triton_kernels=len(rows),
            cuda_kernels=len(cuda),
            spilling=sum(1 for r in rows + cuda if r.get("stack") or r.get("local")),
            problems=problems,
        ),
        triton=rows,
        cuda=cuda,
    )


def _where(row: dict) -> str:
    return ", ".join(row.get("cases", [])[:2]) or row.get("source", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bertfast.compile_report",
        description="Compile every Triton kernel configuration (and csrc/) for sm_80 and "
        "sm_90a and report registers, spills, shared memory and occupancy.",
    )
    parser.add_argument("--matrix", choices=("default", "full"), default="full")
    parser.add_argument("--arch", type=int, nargs="+", choices=sorted(ARCHS), default=[80, 90])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the results")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-cuda", action="store_true", help="leave csrc/ out")
    parser.add_argument(
        "--no-cache", action="store_true", help="compile everything, ignoring the earlier report"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 on any spill, compile error or overflow"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the summary only (with --check in CI)"
    )
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print(
            "compile report: TRITON_INTERPRET=1 is set; unset it (the kernels must be compiled, "
            "not interpreted)",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default: fused FMAs
    json_path = args.out / "report.json"
    cache = {} if args.no_cache else load_cache(DEFAULT_OUT / "report.json")
    if not args.no_cache and json_path != DEFAULT_OUT / "report.json":
        cache.update(load_cache(json_path))
    report = build_report(args.matrix, args.arch, cache, args.jobs, not args.no_cuda)
    summary = report["summary"]
    print(
        f"compile report: {summary['triton_kernels']} Triton kernels, "
        f"{summary['cuda_kernels']} CUDA kernels, {summary['spilling']} spilling, "
        f"{len(summary['problems'])} problems"
    )
    for problem in summary["problems"]:
        print(f"  {problem}")
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")
        (args.out / "report.md").write_text(markdown(report))
        print(f"compile report: wrote {json_path} and {args.out / 'report.md'}")
    return 1 if args.check and summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
