"""The compile report on a machine without a GPU: the launchers choose their configurations by
the card's capability (asked here for sm_80 and sm_90 on meta tensors), the default path
compiles for both with no spill, no compile error and shared memory within the limits, and
the committed report is the compiler's own output for today's kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bertfast import compile_report
from bertfast.bench import gpu_model
from bertfast.triton import attention, linear_epilogue, target

pytest.importorskip("triton")
REPORT = compile_report.DEFAULT_OUT / "report.json"


def _compiler_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    return env


def test_launchers_record_the_config_functions_choice_per_capability():
    """What the launchers would run, recorded on meta tensors: the attention forward's and
    backward's blocks and the GEMM epilogue's tiles follow the capability asked for."""
    training = compile_report.Case("d128", "training", "bf16", 128, dropout=True)
    inference = compile_report.Case("base", "inference", "bf16", 128, layout="padded")
    chosen = {}
    for capability in ((8, 0), (9, 0)):
        launches = compile_report.record_case(training, capability)
        names = [launch.kernel.fn.__name__ for launch in launches]
        assert "_attention_backward_dkdv_kernel" in names and "_attention_kernel" in names
        dkdv = launches[names.index("_attention_backward_dkdv_kernel")]
        block_m, block_n, warps, _ = attention.backward_block_sizes(128, capability)
        assert (dkdv.meta["BLOCK_M"], dkdv.meta["BLOCK_N"], dkdv.meta["num_warps"]) == (
            block_m,
            block_n,
            warps,
        )
        forward = launches[names.index("_attention_kernel")]
        assert forward.meta["STORE_LSE"] and forward.meta["HAS_DROPOUT"]
        assert forward.meta["BLOCK_M"] == attention.block_sizes(128, 128, capability, True)[0]
        (padded,) = [
            x
            for x in compile_report.record_case(inference, capability)
            if x.kernel.fn.__name__ == "_attention_kernel"
        ]
        assert padded.meta["HAS_MASK"] and not padded.meta["STORE_LSE"]
        assert padded.meta["num_warps"] == attention.block_sizes(64, 128, capability)[2]
        chosen[capability] = (dkdv.meta["BLOCK_M"], padded.meta["num_warps"])
    # The archs differ where the compiler's numbers said so (spills on one, not the other).
    assert chosen[(8, 0)][0] != chosen[(9, 0)][0] and chosen[(8, 0)][1] != chosen[(9, 0)][1]
    fused = compile_report.Case("base", "inference", "bf16", 128, fused_epilogues=True)
    for capability in ((8, 0), (9, 0)):
        launches = compile_report.record_case(fused, capability)
        gemm = [x for x in launches if x.kernel.fn.__name__ == "_linear_epilogue_kernel"]
        expected = linear_epilogue.block_config(3072, False, torch.bfloat16, capability)
        assert gemm and all(x.meta["BLOCK_K"] == expected[2] for x in gemm)
        norm = [x for x in launches if x.kernel.fn.__name__ == "_linear_residual_layer_norm_kernel"]
        chunk = linear_epilogue.block_config(768, True, torch.bfloat16, capability)[1]
        assert len(norm) == 1 and norm[0].meta["BLOCK_N"] == chunk < 768  # rows in chunks
    # Outside a recording the same launchers run (CPU tensors: the interpreter's choice).
    assert target.capability(torch.device("cpu")) is None


def test_occupancy_matches_the_hand_count():
    """255 registers at 4 warps: 8,192 per warp (units of 256), 8 warps per SM: 2 blocks.
    96 KiB of shared memory: two blocks fit in sm_90's 228 KiB, one in sm_80's 164 KiB."""
    sm90, sm80 = compile_report.ARCHS[90], compile_report.ARCHS[80]
    assert compile_report.occupancy(sm90, 255, 4, 0)["blocks_per_sm"] == 2
    assert compile_report.occupancy(sm90, 255, 4, 0)["limited_by"] == "registers"
    assert compile_report.occupancy(sm90, 32, 4, 96 * 1024)["blocks_per_sm"] == 2
    assert compile_report.occupancy(sm80, 32, 4, 96 * 1024)["blocks_per_sm"] == 1
    assert compile_report.occupancy(sm80, 32, 4, 96 * 1024)["limited_by"] == "shared"
    assert compile_report.occupancy(sm90, 16, 1, 0)["blocks_per_sm"] == 32  # the block cap


def test_default_path_compiles_without_spills_for_sm80_and_sm90():
    """The gate: every default-path configuration (inference and training, fp16 and bf16,
    MiniLM / base / large) compiled for sm_80 and sm_90a; exit 1 on a spill, a compile error or
    shared memory over the limit. Kernels whose compile inputs (source, specialisation, config,
    arch, triton version) are in the committed report are taken from it; anything changed is
    compiled here."""
    done = subprocess.run(
        [sys.executable, "-m", "bertfast.compile_report", "--matrix", "default", "--check",
         "--no-write", "--no-cuda", "--jobs", "2"],
        capture_output=True, text=True, env=_compiler_env(), timeout=3000,
    )  # fmt: skip
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 spilling, 0 problems" in done.stdout


def test_committed_report_is_the_compilers_output():
    """Two of the report's rows (the default inference attention at s128 on each arch) compiled
    again here give the committed numbers; and the committed report names today's kernels
    (under the triton version it was made with: the key includes it)."""
    import triton

    report = json.loads(REPORT.read_text())
    done = subprocess.run(
        [sys.executable, "-c", _RECOMPILE],
        input=json.dumps(["base inference bf16 s128 packed", [80, 90]]),
        capture_output=True,
        text=True,
        env=_compiler_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    compiled = json.loads(done.stdout.strip().splitlines()[-1])
    rows = {row["key"]: row for row in report["triton"]}
    if report["versions"]["triton"] == triton.__version__:
        missing = [c["key"] for c in compiled if c["key"] not in rows]
        assert not missing, "benchmarks/results/compile is stale: python -m bertfast.compile_report"
    for result in compiled:
        assert "error" not in result, result
        assert result["stack"] == result["local"] == 0
        if result["key"] in rows:
            committed = rows[result["key"]]
            for column in ("registers", "stack", "local", "dynamic_shared", "mma"):
                assert result[column] == committed[column], (column, result, committed)


# Compiles the attention forward of one case for the given archs in a process without the
# interpreter (the @triton.jit functions must be real JITFunctions there); prints each
# result with its compile key.
_RECOMPILE = """
import json, sys
from bertfast import compile_report as cr
label, arches = json.load(sys.stdin)
model, mode, dtype, seq, layout = label.split()
case = cr.Case(model, mode, dtype, int(seq[1:]), layout)
out = []
for arch in arches:
    capability = cr.ARCHS[arch].capability
    (launch,) = [x for x in cr.record_case(case, capability)
                 if x.kernel.fn.__name__ == "_attention_kernel"]
    inputs = cr._compile_inputs(launch, capability)
    out.append(dict(cr._compile_worker(inputs), key=cr.compile_key(inputs)))
print(json.dumps(out))
"""


def test_model_estimates_cover_the_gpu_cases_with_their_assumptions():
    """Every card and case the issue names has a forward estimate whose parts add up."""
    rows = gpu_model.estimate_table()
    totals = {(r["card"], r["case"]): r for r in rows if r["what"] == "total"}
    cards = {card.name for card in gpu_model.CARDS.values()}
    cases = {shape.label for shape in gpu_model.SHAPES}
    assert set(totals) == {(c, s) for c in cards for s in cases}
    for (card, case), total in totals.items():
        parts = [r for r in rows if r["card"] == card and r["case"] == case and r is not total]
        assert total["total_us"] == pytest.approx(sum(r["total_us"] for r in parts))
        assert all(r["per_call_us"] >= gpu_model.MIN_KERNEL_US for r in parts)
    # More bandwidth, same FLOPs: the H200 is never slower than the H100 in the model.
    for case in cases:
        assert totals[("H200", case)]["total_us"] <= totals[("H100 SXM", case)]["total_us"]
    text = gpu_model.markdown(rows)
    assert "not a measurement" in text and all(a in text for a in gpu_model.ASSUMPTIONS)
