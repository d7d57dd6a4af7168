"""CUDA kernel: GELU(x + bias), exact erf form or tanh form, math in fp32.

Launcher of ``bias_gelu`` in csrc/bias_gelu.cu (16-byte loads and stores when rows allow).
"""

from __future__ import annotations

import torch

from bertfast.cuda._launch import as_rows, extension, launch_context, ptr


def launch(x: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    """GELU(x + bias); inputs checked by ``bertfast.ops.bias_gelu``."""
    rows_view = as_rows("x", x)
    rows, cols = rows_view.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    dtype, device, stream = launch_context(x)
    extension().bias_gelu(
        out=out.data_ptr(),
        x=rows_view.data_ptr(),
        bias=ptr(bias),
        rows=rows,
        cols=cols,
        stride_x=rows_view.stride(0),
        tanh=approximate == "tanh",
        dtype=dtype,
        device=device,
        stream=stream,
        check_pointers=False,  # torch placed every tensor; ops checked the devices
    )
    return out
