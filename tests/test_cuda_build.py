"""The CUDA extension on a machine without a GPU: csrc/ builds with CMake for sm_80 and sm_90a,
the module imports, its machine code uses tensor cores without register spills, and the
Python launchers reject bad inputs with errors that name what was given."""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertfast import ops
from bertfast.cuda import _launch
from bertfast.cuda import attention as attention_module
from bertfast.cuda import bias_gelu as bias_gelu_module
from bertfast.cuda import bias_residual_layer_norm as layer_norm_module
from bertfast.cuda import embedding_layer_norm as embedding_module
from tests import cuda_build

# The checked entry points of the CUDA kernels are the ops with backend="cuda".
attention = functools.partial(ops.attention, backend="cuda")
bias_gelu = functools.partial(ops.bias_gelu, backend="cuda")
bias_residual_layer_norm = functools.partial(ops.bias_residual_layer_norm, backend="cuda")
embedding_layer_norm = functools.partial(ops.embedding_layer_norm, backend="cuda")

ARCHS = cuda_build.ARCHS
ATTENTION_INSTANCES = [
    (dtype, d) for dtype in ("__half", "__nv_bfloat16") for d in (16, 32, 64, 128)
]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """(module path, build directory) of csrc/ built once per session: the build that
    tests/conftest.py started in the background as the session began, or one started now."""
    reason = cuda_build.missing_tools()
    if reason is not None:
        pytest.skip(reason)
    build = cuda_build.started() or cuda_build.start(tmp_path_factory.mktemp("cuda_build"))
    return build.wait(), build.dir


def _load(path: Path):
    """Import the built module without registering it as bertfast._cuda for other tests."""
    spec = importlib.util.spec_from_file_location("_cuda", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sass(library: Path, arch: str) -> str:
    """``cuobjdump -sass`` of ``library`` for ``arch``: the session's build job dumped it beside
    the module, else it is dumped now."""
    build = cuda_build.started()
    if build is not None and library.parent == build.out:
        dumped = build.sass(arch)
        if dumped is not None:
            return dumped
    tool = cuda_build.cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (it ships in the triton wheel)")
    result = subprocess.run(
        [tool, "-sass", "-arch", f"sm_{arch}", str(library)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@functools.cache
def _sass_by_function(library: Path, arch: str) -> dict[str, str]:
    """SASS by function name, disassembled once per library and arch (a dump takes seconds;
    the tests only read it)."""
    functions: dict[str, str] = {}
    name = None
    for line in _sass(library, arch).splitlines():
        match = re.match(r"\s*Function : (\S+)", line)
        if match:
            name = match.group(1)
            functions[name] = ""
        elif name is not None:
            functions[name] += line + "\n"
    assert functions, f"no sm_{arch} machine code in {library}"
    return functions


def _attention_kernels(functions: dict[str, str]) -> dict[tuple[str, int], str]:
    """SASS of attention_mma_kernel<T, D>, by (T, D)."""
    found = {}
    for name, sass in functions.items():
        match = re.search(r"attention_mma_kernelI(6__half|13__nv_bfloat16)Li(\d+)E", name)
        if match:
            dtype = match.group(1).lstrip("0123456789")
            found[(dtype, int(match.group(2)))] = sass
    return found


def test_module_imports_and_reports_no_gpu(built):
    module = _load(built[0])
    for name in ("attention", "bias_gelu", "bias_residual_layer_norm", "embedding_layer_norm"):
        assert callable(getattr(module, name))
    assert module.CUDA_ARCHITECTURES == ",".join(ARCHS)
    assert module.ATTENTION_HEAD_DIMS == (16, 32, 64, 128)
    if torch.cuda.is_available():
        return  # the "no GPU" error below is for machines without one
    with pytest.raises(RuntimeError, match="no usable CUDA device"):
        module.bias_gelu(16, 16, 0, 2, 8, 8, False, 1, 0, 0)
    # Argument errors come before any device query.
    with pytest.raises(ValueError, match="head_dim 48 is not supported; supported: 16, 32, 64"):
        module.attention(16, 16, 0, 0, 1, 4, 4, 2, 48, 0, 0, 0, 0, 0, 1, 0, 0)
    with pytest.raises(ValueError, match="dtype code 7 is not supported"):
        module.bias_gelu(16, 16, 0, 2, 8, 8, False, 7, 0, 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_runs_on_tensor_cores(built, arch):
    kernels = _attention_kernels(_sass_by_function(built[0], arch))
    assert sorted(kernels) == sorted(ATTENTION_INSTANCES)
    for (dtype, d), sass in kernels.items():
        hmma = len(re.findall(r"\bHMMA\.", sass))
        hgmma = len(re.findall(r"\bHGMMA\.", sass))
        assert hmma + hgmma > 0, f"sm_{arch} attention<{dtype}, {d}>: no HMMA/HGMMA"
        # Fully unrolled tiles: (d/16 x 64/16 x 2) for S = QK^T plus as many for O += PV.
        assert hmma + hgmma >= d // 2, (arch, dtype, d, hmma, hgmma)
        assert "LDSM" in sass, "operands come from shared memory through ldmatrix"
        assert "LDGSTS" in sass, "K/V tiles are copied with cp.async"


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_has_no_register_spills(built, arch):
    tool = cuda_build.cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (it ships in the triton wheel)")
    result = subprocess.run(
        [tool, "-res-usage", "-arch", f"sm_{arch}", str(built[0])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    usage = dict(re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", result.stdout))
    attention_usage = {k: v for k, v in usage.items() if "attention" in k}
    assert len(attention_usage) >= len(ATTENTION_INSTANCES)
    for name, line in attention_usage.items():
        stack = int(re.search(r"STACK:(\d+)", line).group(1))
        local = int(re.search(r"LOCAL:(\d+)", line).group(1))
        assert stack == 0 and local == 0, f"{name} spills: {line}"
    for name, sass in _sass_by_function(built[0], arch).items():
        if "attention" in name:
            assert not re.search(r"\b(LDL|STL)\b", sass), f"{name} uses local memory"


def test_memory_bound_kernels_use_16_byte_accesses(built):
    functions = _sass_by_function(built[0], "80")
    vectorised = {
        "bias_gelu_kernelI6__halfLi8E": "bias_gelu fp16",
        "bias_residual_layer_norm_kernelI13__nv_bfloat16Li8E": "bias_residual_layer_norm bf16",
        "embedding_layer_norm_kernelIfiLi4E": "embedding_layer_norm fp32",
    }
    for key, what in vectorised.items():
        sass = "".join(s for name, s in functions.items() if key in name)
        assert sass, f"{what}: kernel not found"
        assert re.search(r"LDG\.E\.(\S+\.)?128", sass), f"{what}: no 16-byte loads"
        assert re.search(r"STG\.E\.(\S+\.)?128", sass), f"{what}: no 16-byte stores"


def test_build_flags_keep_accurate_math(built):
    """No --use_fast_math: the erf GELU and the LayerNorm divisions stay IEEE-accurate."""
    _, build = built
    flag_files = [*build.rglob("build.ninja"), *build.rglob("flags.make")]
    assert flag_files, f"no generator flag files under {build}"
    flags = "\n".join(f.read_text() for f in flag_files)
    assert "-lineinfo" in flags
    assert "fast_math" not in flags and "fast-math" not in flags


# Launcher checks: all of these run before any GPU is touched.


def test_attention_rejects_bad_inputs():
    qkv = torch.randn(1, 4, 3 * 64, dtype=torch.float16)
    with pytest.raises(TypeError, match="qkv has dtype torch.int32; supported"):
        attention(torch.zeros(1, 4, 3 * 64, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="last-dimension stride 2"):
        attention(torch.randn(1, 4, 3 * 64 * 2, dtype=torch.float16)[..., ::2], 2)
    with pytest.raises(ValueError, match=r"head_dim 48 .* supported: \(16, 32, 64, 128\)"):
        attention(torch.randn(1, 4, 3 * 96, dtype=torch.float16), 2)
    with pytest.raises(ValueError, match=r"must be 3 \* num_heads \* head_dim"):
        attention(qkv, 5)
    with pytest.raises(TypeError, match="key_padding_mask must be bool, got torch.int64"):
        attention(qkv, 2, key_padding_mask=torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"key_padding_mask has shape \(1, 3\)"):
        attention(qkv, 2, key_padding_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="cu_seqlens must be a 1-D int32 tensor"):
        attention(qkv[0], 2, cu_seqlens=torch.tensor([0, 4]), max_seqlen=4)
    with pytest.raises(ValueError, match="packed qkv must be"):
        attention(qkv, 2, cu_seqlens=torch.tensor([0, 4], dtype=torch.int32), max_seqlen=4)
    with pytest.raises(RuntimeError, match=r"qkv is a CPU tensor \(cpu\); the CUDA kernels run"):
        attention(qkv, 2)


def test_layer_norm_and_gelu_reject_bad_inputs():
    x = torch.randn(3, 8)
    w, b = torch.ones(8), torch.zeros(8)
    with pytest.raises(ValueError, match=r"residual has shape \(3, 7\), x has \(3, 8\)"):
        bias_residual_layer_norm(x, None, x[:, :7], w, b, 1e-5)
    with pytest.raises(TypeError, match="residual has dtype torch.float16 but x has torch.float32"):
        bias_residual_layer_norm(x, None, x.half(), w, b, 1e-5)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\), got \(4,\)"):
        bias_residual_layer_norm(x, None, x, w[:4], b, 1e-5)
    with pytest.raises(RuntimeError, match="x is a CPU tensor"):
        bias_residual_layer_norm(x, None, x, w, b, 1e-5)
    with pytest.raises(ValueError, match=r"approximate='fast'; supported: \('none', 'tanh'\)"):
        bias_gelu(x, None, "fast")
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        bias_gelu(x.double(), None, "none")
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        bias_gelu(x, torch.zeros(5), "none")
    with pytest.raises(RuntimeError, match="x is a CPU tensor"):
        bias_gelu(x, b, "tanh")


def test_embedding_rejects_bad_inputs():
    ids = torch.zeros(2, 3, dtype=torch.long)
    tables = [
        torch.randn(10, 8),
        torch.randn(5, 8),
        torch.randn(2, 8),
        torch.ones(8),
        torch.zeros(8),
    ]
    with pytest.raises(TypeError, match="input_ids must be int32 or int64, got torch.float32"):
        embedding_layer_norm(ids.float(), ids, ids, *tables, 1e-12)
    with pytest.raises(ValueError, match=r"position_ids has shape \(2, 2\)"):
        embedding_layer_norm(ids, ids, ids[:, :2], *tables, 1e-12)
    bad = [tables[0], torch.randn(5, 4), *tables[2:]]
    with pytest.raises(ValueError, match=r"position_embeddings must be \(rows, 8\)"):
        embedding_layer_norm(ids, ids, ids, *bad, 1e-12)
    with pytest.raises(RuntimeError, match="word_embeddings is a CPU tensor"):
        embedding_layer_norm(ids, ids, ids, *tables, 1e-12)


def test_missing_extension_says_how_to_build(monkeypatch):
    monkeypatch.setattr(_launch, "_extension", None)
    monkeypatch.setitem(sys.modules, "bertfast._cuda", None)  # import now fails
    with pytest.raises(RuntimeError, match=r"not built .*cmake -S \. -B build"):
        _launch.extension()


def test_importing_launchers_does_not_load_the_extension():
    code = (
        "import sys, bertfast.cuda.attention, bertfast.cuda.bias_gelu, "
        "bertfast.cuda.bias_residual_layer_norm, bertfast.cuda.embedding_layer_norm\n"
        "assert 'bertfast._cuda' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_custom_ops_have_fake_implementations():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        qkv = torch.empty(10, 3 * 64, dtype=torch.float16)
        cu = torch.empty(3, dtype=torch.int32)
        out = torch.ops.bertfast.attention(qkv, 2, None, cu, 7, "cuda")
        x = torch.empty(4, 6, 32)
        gelu = torch.ops.bertfast.bias_gelu(x, None, "none", "cuda")
        ln = torch.ops.bertfast.bias_residual_layer_norm(
            x, None, x, torch.empty(32), torch.empty(32), 1e-5, "cuda"
        )
        ids = torch.empty(5, dtype=torch.long)
        emb = torch.ops.bertfast.embedding_layer_norm(
            ids, ids, ids, x[0], x[0], x[0], torch.empty(32), torch.empty(32), 1e-5, "cuda"
        )
    assert out.shape == (10, 64) and out.dtype == torch.float16
    assert gelu.shape == ln.shape == (4, 6, 32)
    assert emb.shape == (5, 32)


def test_backend_report_gives_the_cuda_reason(capsys):
    from bertfast import cli

    reason = ops.backend_report("cpu")["cuda"]
    # The device reason first, built or not: building would not make it run here.
    assert reason == "the CUDA kernels run on CUDA devices only, not on 'cpu'"
    if ops.cuda_extension_reason() is not None:
        assert "bertfast._cuda is not built" in ops.cuda_extension_reason()
        assert "cmake -S . -B build" in ops.cuda_extension_reason()
    assert cli.main(["info"]) == 0
    printed = capsys.readouterr().out
    assert f"cuda    unavailable: {reason}" in printed
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run on cpu"):
        ops.resolve_backend("cuda", "cpu")


# What the launchers hand to the extension, checked on CPU tensors with a recording stand-in.

LAUNCHER_MODULES = (attention_module, bias_gelu_module, layer_norm_module, embedding_module)
STREAM = 1234


class _Recorder:
    """Stands in for bertfast._cuda: records each launcher call's keyword arguments."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def record(**kwargs):
            self.calls.append((name, kwargs))

        return record


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(_launch, "_extension", rec)
    for module in LAUNCHER_MODULES:
        monkeypatch.setattr(
            module, "launch_context", lambda t: (_launch.DTYPE_CODES[t.dtype], 0, STREAM)
        )
    return rec


def _recorded_calls():
    """One call of every launch, in its main forms, through the recording stand-in."""
    big = torch.randn(2, 5, 3 * 64 + 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    attention_module.launch(big[..., : 3 * 64], 2, mask, None, None)
    misaligned = torch.randn(7, 3 * 64 + 3, dtype=torch.float16)[:, : 3 * 64]
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    attention_module.launch(misaligned, 2, None, cu, 4)
    x = torch.randn(3, 4, 40)[:, :, :32]  # rows of 32 with a row stride of 40
    v = torch.randn(32)
    layer_norm_module.launch(x, None, x, v, v, 0.5)
    bias_gelu_module.launch(x.reshape(12, 32)[:, :16], v[:16], "tanh")
    ids = torch.tensor([[1, 2, 3]])
    table = torch.randn(9, 32, dtype=torch.bfloat16)
    w = v.bfloat16()
    embedding_module.launch(ids, ids.int(), ids, table, table, table, w, w, 1e-12)
    return mask


def test_launchers_pass_pointers_strides_and_stream(recorder):
    mask = _recorded_calls()
    calls = recorder.calls
    assert [name for name, _ in calls] == [
        "attention",
        "attention",
        "bias_residual_layer_norm",
        "bias_gelu",
        "embedding_layer_norm",
    ]
    assert all(kw["stream"] == STREAM and kw["device"] == 0 for _, kw in calls)
    padded, packed, layer_norm, gelu, embedding = (kw for _, kw in calls)
    # Padded fp32 view: read in place with its strides; the mask as bytes.
    assert padded["stride_qkv_token"] == 3 * 64 + 8
    assert padded["stride_qkv_batch"] == 5 * (3 * 64 + 8)
    assert (padded["stride_out_batch"], padded["stride_out_token"]) == (5 * 64, 64)
    assert (padded["batch"], padded["seq_len"], padded["max_seqlen"]) == (2, 5, 5)
    assert (padded["num_heads"], padded["head_dim"], padded["dtype"]) == (2, 32, 0)
    assert padded["mask"] != 0 and padded["cu_seqlens"] == 0
    assert padded["stride_mask_batch"] == mask.shape[1]
    # Packed fp16 rows that are not 16-byte aligned: copied into contiguous rows first.
    assert packed["stride_qkv_token"] == 3 * 64 and packed["stride_qkv_batch"] == 0
    assert (packed["batch"], packed["seq_len"], packed["max_seqlen"]) == (2, 0, 4)
    assert packed["mask"] == 0 and packed["cu_seqlens"] != 0 and packed["dtype"] == 1
    # Rows of strided x and residual; no bias is a null pointer; eps passed through.
    assert (layer_norm["rows"], layer_norm["hidden"]) == (12, 32)
    assert layer_norm["stride_x"] == layer_norm["stride_residual"] == 40
    assert layer_norm["bias"] == 0 and layer_norm["eps"] == 0.5
    assert (gelu["rows"], gelu["cols"], gelu["stride_x"], gelu["tanh"]) == (12, 16, 40, True)
    # Mixed int32/int64 ids are read with input_ids' type.
    assert embedding["ids_int64"] is True and embedding["dtype"] == 2
    assert (embedding["tokens"], embedding["hidden"]) == (3, 32)


def test_launcher_keywords_match_the_extension(built, monkeypatch):
    """Every keyword a launcher passes is a parameter of the compiled function, and back."""
    module = _load(built[0])
    rec = _Recorder()
    monkeypatch.setattr(_launch, "_extension", rec)
    for launcher in LAUNCHER_MODULES:
        monkeypatch.setattr(launcher, "launch_context", lambda t: (0, 0, STREAM))
    _recorded_calls()
    for name, kwargs in rec.calls:
        signature = getattr(module, name).__doc__.splitlines()[0]
        params = re.findall(r"(\w+): ", signature.split("(", 1)[1])
        assert sorted(params) == sorted(kwargs), f"{name}: {signature}"
