"""CUDA kernel: word + position + segment embedding gather, sum and LayerNorm in one pass.

Launcher of ``embedding_layer_norm`` in csrc/embedding_layer_norm.cu (one block per token,
16-byte loads when the tables allow, fp32 statistics).
"""

from __future__ import annotations

import torch

from bertfast.cuda._launch import extension, launch_context


def launch(
    input_ids, token_type_ids, position_ids, word, position, token_type, weight, bias, eps: float
) -> torch.Tensor:
    """Embedding sum and LayerNorm; inputs checked by ``bertfast.ops.embedding_layer_norm``."""
    hidden = word.shape[1]
    out = torch.empty(*input_ids.shape, hidden, dtype=word.dtype, device=word.device)
    tokens = input_ids.numel()
    if tokens == 0:
        return out
    # The kernel reads all three id tensors with one integer type: that of input_ids.
    ids = [
        t.reshape(-1).to(input_ids.dtype).contiguous()
        for t in (input_ids, token_type_ids, position_ids)
    ]
    dtype, device, stream = launch_context(word)
    extension().embedding_layer_norm(
        out=out.data_ptr(),
        input_ids=ids[0].data_ptr(),
        token_type_ids=ids[1].data_ptr(),
        position_ids=ids[2].data_ptr(),
        word_embeddings=word.data_ptr(),
        position_embeddings=position.data_ptr(),
        token_type_embeddings=token_type.data_ptr(),
        weight=weight.data_ptr(),
        bias=bias.data_ptr(),
        tokens=tokens,
        hidden=hidden,
        ids_int64=input_ids.dtype == torch.int64,
        dtype=dtype,
        eps=float(eps),
        device=device,
        stream=stream,
        check_pointers=False,  # torch placed every tensor; ops checked the devices
    )
    return out
