"""The dispatch layer: every hot op of the encoder, and the backends that can run it.

Each op lives in its own module (signature, input checks, torch reference, dispatch). A backend
declares where it can run; ``resolve_backend`` turns a request ("auto", "torch", "triton",
"cuda") into one that can run on a device, or raises an error that says why it cannot.
"""

from __future__ import annotations

from bertfast.ops import registry
from bertfast.ops.attention import attention, attention_reference
from bertfast.ops.bias_gelu import bias_gelu, bias_gelu_linear, bias_gelu_reference
from bertfast.ops.bias_residual_layer_norm import (
    bias_residual_layer_norm,
    bias_residual_layer_norm_reference,
)
from bertfast.ops.embedding_layer_norm import (
    embedding_layer_norm,
    embedding_layer_norm_reference,
)
from bertfast.ops.linear_epilogue import (
    EPILOGUES,
    linear_epilogue,
    linear_epilogue_reference,
)
from bertfast.ops.registry import (  # the registry, re-exported
    AUTO_ATTENTION_SWITCH,
    AUTO_PRIORITY,
    BACKEND_INFO,
    BACKENDS,
    KERNEL_BACKWARD_OPS,
    KERNEL_HEAD_DIMS,
    KERNEL_OPS,
    OPS,
    auto_attention_backend,
    backend_report,
    cuda_extension_reason,
    get_backward,
    get_kernel,
    load_kernels,
    no_backward_message,
    resolve_backend,
    run_kernel,
    triton_interpreter_enabled,
)

__all__ = [
    "AUTO_ATTENTION_SWITCH",
    "AUTO_PRIORITY",
    "KERNEL_BACKWARD_OPS",
    "KERNEL_HEAD_DIMS",
    "KERNEL_OPS",
    "auto_attention_backend",
    "cuda_extension_reason",
    "no_backward_message",
    "registry",
    "triton_interpreter_enabled",
    "BACKENDS",
    "BACKEND_INFO",
    "OPS",
    "attention",
    "attention_reference",
    "backend_report",
    "bias_gelu",
    "bias_gelu_linear",
    "bias_gelu_reference",
    "bias_residual_layer_norm",
    "bias_residual_layer_norm_reference",
    "embedding_layer_norm",
    "embedding_layer_norm_reference",
    "EPILOGUES",
    "linear_epilogue",
    "linear_epilogue_reference",
    "get_backward",
    "get_kernel",
    "run_kernel",
    "load_kernels",
    "resolve_backend",
]
