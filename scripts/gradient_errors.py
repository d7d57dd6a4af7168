"""Max gradient errors of every Triton backward against autograd on the op's fp32 reference, and
of a small model's parameters against the torch backend and transformers.

Usage: python scripts/gradient_errors.py [OUT_DIR] [--device cuda]
On the CPU it needs TRITON_INTERPRET=1 (fp32 and fp16); on a GPU it runs fp32, fp16 and bf16.
Low precision rows show the error of the same reference run in that dtype beside ours (the
tests hold ours within 2x of it on the interpreter, 3x on a GPU). Writes
gradient_errors.{json,md} to OUT_DIR (default: the current directory).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bertfast import BertModel, ops  # noqa: E402


def _grads(fn, inputs, grad_out, wrt):
    leaves = [
        t.detach().clone().requires_grad_(i in wrt)
        if isinstance(t, torch.Tensor) and t.is_floating_point()
        else t
        for i, t in enumerate(inputs)
    ]
    out = fn(*leaves)
    return torch.autograd.grad(out, [leaves[i] for i in wrt], grad_out)


def _cast(inputs, dtype):
    return [
        t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs
    ]


def _lengths_mask(lengths, seq, device):
    return torch.arange(seq, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]


def op_cases(device):
    r = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    rows, hidden, inter = 197, 96, 384
    ids = [torch.randint(0, high, (rows,), device=device) for high in (50, 2, 128)]
    mask = _lengths_mask([37, 20, 1], 37, device)
    offsets = torch.tensor([0, 37, 57, 58], dtype=torch.int32, device=device)
    yield (
        "embedding_layer_norm",
        lambda *a, backend="torch": ops.embedding_layer_norm(*a, backend=backend),
        [*ids, r(50, hidden), r(128, hidden), r(2, hidden), r(hidden) + 1, r(hidden), 1e-12],
        {3: "word", 4: "position", 5: "token_type", 6: "weight", 7: "bias"},
    )
    yield (
        "attention (padded)",
        lambda qkv, m, backend="torch": ops.attention(qkv, 3, key_padding_mask=m, backend=backend),
        [r(3, 37, 3 * 96), mask],
        {0: "qkv"},
    )
    yield (
        "attention (packed)",
        lambda qkv, backend="torch": ops.attention(
            qkv, 3, cu_seqlens=offsets, max_seqlen=37, backend=backend
        ),
        [r(58, 3 * 96)],
        {0: "qkv"},
    )
    yield (
        "bias_residual_layer_norm",
        lambda *a, backend="torch": ops.bias_residual_layer_norm(*a, backend=backend),
        [r(rows, hidden) * 2 + 1, r(hidden), r(rows, hidden), r(hidden) + 1, r(hidden), 1e-12],
        {0: "x", 1: "bias", 2: "residual", 3: "weight", 4: "ln_bias"},
    )
    for approximate in ("none", "tanh"):
        yield (
            f"bias_gelu ({approximate})",
            lambda x, b, backend="torch", a=approximate: ops.bias_gelu(x, b, a, backend=backend),
            [r(rows, inter) * 3, r(inter)],
            {0: "x", 1: "bias"},
        )
    for epilogue in ops.EPILOGUES:
        norm = epilogue == "bias_residual_layer_norm"
        inputs = [r(rows, inter) * 0.2, r(hidden, inter) * 0.1, r(hidden), epilogue,
                  r(rows, hidden) if norm else None, r(hidden) + 1 if norm else None,
                  r(hidden) if norm else None, 1e-12]  # fmt: skip
        names = {0: "x", 1: "weight", 2: "bias"}
        if norm:
            names.update({4: "residual", 5: "ln_weight", 6: "ln_bias"})
        yield (
            f"linear_epilogue ({epilogue})",
            lambda *a, backend="torch": (
                ops.linear_epilogue(*a, backend=backend)
                if backend != "torch"
                else ops.linear_epilogue_reference(*a)
            ),
            inputs,
            names,
        )


def op_rows(device, dtypes):
    rows = []
    for name, fn, inputs, names in op_cases(device):
        wrt = list(names)
        out = fn(*inputs)
        grad_out = torch.randn(out.shape, device=device)
        expected = _grads(fn, inputs, grad_out, wrt)
        for dtype in dtypes:
            cast = _cast(inputs, dtype)
            kernel = functools.partial(fn, backend="triton")
            ours = _grads(kernel, cast, grad_out.to(dtype), wrt)
            low = _grads(fn, cast, grad_out.to(dtype), wrt) if dtype != torch.float32 else None
            for k, i in enumerate(wrt):
                err = (ours[k].double() - expected[k].double()).abs().max().item()
                ref = None if low is None else (low[k].double() - expected[k].double()).abs()
                rows.append(
                    dict(
                        op=name, grad=names[i], dtype=str(dtype).removeprefix("torch."),
                        max_abs_err=err,
                        reference_err=None if ref is None else ref.max().item(),
                        largest=expected[k].abs().max().item(),
                    )
                )  # fmt: skip
    return rows


def model_rows(device):
    """Every parameter's gradient of a 2-layer model (hidden 64, dropout off) on Triton
    against the torch backend and transformers, fp32."""
    import transformers

    from bertfast.weights import bertfast_to_hf

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    hf = transformers.BertModel(config).to(device).train()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        models = {b: BertModel.from_pretrained(tmp, backend=b, device=device).train()
                  for b in ("triton", "torch")}  # fmt: skip
    ids = torch.randint(1, 99, (3, 13), device=device)
    mask = _lengths_mask([13, 7, 1], 13, device)
    weights = torch.linspace(-1, 1, 64, device=device)
    grads = {}
    for name, model in {**models, "transformers": hf}.items():
        model.zero_grad()
        if name == "transformers":
            out = model(input_ids=ids, attention_mask=mask.long())
        else:
            out = model(ids, attention_mask=mask.long())
        loss = (out.last_hidden_state[mask] * weights).sum() + out.pooler_output.square().sum()
        loss.backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters()}
    ours = grads["triton"]
    vs_torch = max((ours[n] - g).abs().max().item() for n, g in grads["torch"].items())
    as_hf = bertfast_to_hf(ours)
    vs_hf = max((as_hf[n] - g).abs().max().item() for n, g in grads["transformers"].items())
    largest = max(g.abs().max().item() for g in ours.values())
    return [dict(model="BertModel L2 H64 fp32", vs_torch_backend=vs_torch,
                 vs_transformers=vs_hf, largest_grad=largest, parameters=len(ours))]  # fmt: skip


def render(op_table, model_table, device) -> str:
    lines = [f"# Triton backward: max gradient errors ({device})", "",
             "| op | grad | dtype | max abs err | same reference in dtype | largest |",
             "|---|---|---|---:|---:|---:|"]  # fmt: skip
    for r in op_table:
        ref = "" if r["reference_err"] is None else f"{r['reference_err']:.2e}"
        lines.append(f"| {r['op']} | d{r['grad']} | {r['dtype']} | {r['max_abs_err']:.2e} | "
                     f"{ref} | {r['largest']:.3g} |")  # fmt: skip
    lines += ["", "| model | vs torch backend | vs transformers | largest grad | parameters |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in model_table:
        lines.append(f"| {r['model']} | {r['vs_torch_backend']:.2e} | {r['vs_transformers']:.2e}"
                     f" | {r['largest_grad']:.3g} | {r['parameters']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=".", help="where the files go")
    parser.add_argument("--device", default="cpu", help="cpu (interpreter) or cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        dtypes = [torch.float32, torch.float16, torch.bfloat16]
    else:
        dtypes = [torch.float32, torch.float16]  # bf16 dot products: not on the interpreter
    torch.manual_seed(0)
    op_table = op_rows(device, dtypes)
    model_table = model_rows(device)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu interpreter"
    (out / "gradient_errors.json").write_text(
        json.dumps(dict(device=name, ops=op_table, models=model_table), indent=1)
    )
    text = render(op_table, model_table, name)
    (out / "gradient_errors.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
