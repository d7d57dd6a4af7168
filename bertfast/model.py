"""The encoder: embeddings -> post-LN transformer layers -> tanh pooler.

The model calls ops only (``bertfast.ops``), never a backend directly. On a kernel backend a
padded batch is packed once after the embedding lookup: every layer then runs on real tokens
only with the variable-length attention, and padding is put back at the output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bertfast import cpu_linear, ops
from bertfast.config import BertConfig
from bertfast.graphs import PackedGraphs
from bertfast.packing import PackedBatch, real_token_indices  # noqa: F401 (importable here as before)

BACKEND_CHOICES = ("auto", "torch", "triton", "cuda")


@dataclass
class BertModelOutput:
    """What ``BertModel.forward`` returns; indexable like Hugging Face's output tuples."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    # With output_hidden_states=True: the embeddings' output, then each layer's.
    hidden_states: tuple[torch.Tensor, ...] | None = None

    def to_tuple(self) -> tuple:
        return tuple(
            getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        )

    def __getitem__(self, key: int | str):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]


class _ZeroRowGradient(torch.autograd.Function):
    """Identity whose backward zeroes one row: nn.Embedding(padding_idx)'s rule for the fused op."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, row: int) -> torch.Tensor:
        ctx.row = row
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        grad[ctx.row] = 0
        return grad, None


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype torch.autocast runs GEMMs in on ``device`` now, None when it is off. Under
    autocast the kernels take its layout: float16/bfloat16 GEMM outputs beside float32
    parameters and residual stream, each LayerNorm's output in the stream's float32."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, config.pad_token_id, **kw)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h, **kw)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h, **kw)
        self.layer_norm = nn.LayerNorm(h, eps=config.layer_norm_eps, **kw)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids, token_type_ids, position_ids, backend: str, validate: bool = True
    ) -> torch.Tensor:
        words = self.word_embeddings.weight
        padding_idx = self.word_embeddings.padding_idx
        if padding_idx is not None and words.requires_grad and torch.is_grad_enabled():
            words = _ZeroRowGradient.apply(words, padding_idx)
        return ops.embedding_layer_norm(
            input_ids,
            token_type_ids,
            position_ids,
            words,
            self.position_embeddings.weight,
            self.token_type_embeddings.weight,
            self.layer_norm.weight,
            self.layer_norm.bias,
            self.layer_norm.eps,
            backend=backend,
            validate=validate,
            dropout_p=self.dropout.p if self.training else 0.0,  # inside the kernel on Triton
        )


class BertLayer(nn.Module):
    """One post-LN transformer layer with the query/key/value projections fused into one GEMM."""

    def __init__(self, config: BertConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        h, i = config.hidden_size, config.intermediate_size
        self.num_heads = config.num_attention_heads
        self.gelu_approximate = config.gelu_approximate
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(h, 3 * h, **kw)
        self.attention_output = nn.Linear(h, h, **kw)
        self.attention_norm = nn.LayerNorm(h, eps=config.layer_norm_eps, **kw)
        self.intermediate = nn.Linear(h, i, **kw)
        self.output = nn.Linear(i, h, **kw)
        self.output_norm = nn.LayerNorm(h, eps=config.layer_norm_eps, **kw)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _residual_norm(
        self, x, linear: nn.Linear, residual, norm: nn.LayerNorm, backend: str, validate: bool
    ):
        # The hidden dropout sits between the bias and the residual: the op applies it (inside
        # the kernel on Triton, the mask drawn again in its backward).
        dropout_p = self.dropout.p if self.training else 0.0
        return ops.bias_residual_layer_norm(
            x, linear.bias, residual, norm.weight, norm.bias, norm.eps,
            backend=backend, validate=validate, dropout_p=dropout_p,
        )  # fmt: skip

    def forward(
        self,
        hidden: torch.Tensor,
        backend: str,
        key_padding_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        validate: bool = True,
        fused_epilogues: bool = False,
        attention_backend: str | None = None,
    ) -> torch.Tensor:
        """One layer; ``fused_epilogues`` runs the three GEMMs that have elementwise work after
        them with that work inside the GEMM (``ops.linear_epilogue``; in training with the
        hidden dropout inside too);
        ``attention_backend`` overrides ``backend`` for the attention (``auto``'s choice)."""
        if backend == "torch":  # oneDNN with packed weights for CPU inference, else F.linear
            qkv = cpu_linear.linear(hidden, self.qkv.weight, self.qkv.bias)
        else:
            qkv = F.linear(hidden, self.qkv.weight, self.qkv.bias)
        context = ops.attention(
            qkv,
            self.num_heads,
            key_padding_mask=key_padding_mask,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
            dropout_p=self.attention_dropout if self.training else 0.0,
            backend=attention_backend or backend,
            check_cu_seqlens=False,  # PackedBatch built them
            validate=validate,
        )
        if fused_epilogues:
            return self._forward_fused(context, hidden, backend, validate)
        if backend == "torch" and (hidden.dtype == torch.float32 or cpu_linear.applies(hidden)):
            return self._forward_native(context, hidden)  # fp32, or bf16 on a CPU that has it
        attn = F.linear(context, self.attention_output.weight)
        hidden = self._residual_norm(
            attn, self.attention_output, hidden, self.attention_norm, backend, validate
        )
        pre = F.linear(hidden, self.intermediate.weight)
        gelu = (pre, self.intermediate.bias, self.gelu_approximate)
        if self.training and torch.is_grad_enabled():
            # The GELU output is recomputed in the backward rather than kept for it.
            out = ops.bias_gelu_linear(*gelu, self.output.weight, backend, validate)
        else:
            out = F.linear(
                ops.bias_gelu(*gelu, backend=backend, validate=validate), self.output.weight
            )
        return self._residual_norm(out, self.output, hidden, self.output_norm, backend, validate)

    def _forward_native(self, context: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The torch backend in fp32: bias inside the GEMM (addmm) and one add before each
        LayerNorm, as transformers computes it; in fp32 this equals the op references with
        fewer passes over the activations (the CPU path's cost)."""
        linear = cpu_linear.linear  # oneDNN with packed weights for CPU inference, else F.linear
        dense = self.attention_output
        attn = self.dropout(linear(context, dense.weight, dense.bias))
        norm = self.attention_norm
        hidden = F.layer_norm(
            attn + hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps
        )
        dense = self.intermediate
        inter = linear(hidden, dense.weight, dense.bias, gelu=self.gelu_approximate)
        out = self.dropout(linear(inter, self.output.weight, self.output.bias))
        norm = self.output_norm
        return F.layer_norm(out + hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def _forward_fused(self, context, hidden, backend: str, validate: bool) -> torch.Tensor:
        dropout_p = self.dropout.p if self.training else 0.0
        autocast = _autocast_dtype(context.device)

        def project(x, linear: nn.Linear, epilogue: str, residual=None, norm=None):
            weight = linear.weight
            if autocast is not None:  # as autocast casts F.linear's operands
                x, weight = x.to(autocast), weight.to(autocast)
            return ops.linear_epilogue(
                x,
                weight,
                linear.bias,
                epilogue,
                residual,
                None if norm is None else norm.weight,
                None if norm is None else norm.bias,
                1e-12 if norm is None else norm.eps,
                backend=backend,
                validate=validate,
                dropout_p=0.0 if norm is None else dropout_p,  # before the residual
            )

        norm_epilogue = "bias_residual_layer_norm"
        hidden = project(context, self.attention_output, norm_epilogue, hidden, self.attention_norm)
        gelu = "bias_gelu_tanh" if self.gelu_approximate == "tanh" else "bias_gelu"
        inter = project(hidden, self.intermediate, gelu)
        return project(inter, self.output, norm_epilogue, hidden, self.output_norm)


def _check_id_tensor(name: str, t: torch.Tensor, shape: torch.Size | None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (torch.long), got {t.dtype}")
    if shape is not None and t.shape != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; input_ids has {tuple(shape)}")


class PreparedInputs(NamedTuple):
    """Validated inputs on the model's device."""

    input_ids: torch.Tensor
    mask: torch.Tensor | None  # bool, True = real token; None when no mask was given
    token_type_ids: torch.Tensor
    position_ids: torch.Tensor
    has_padding: bool  # any position is padding
    first_padded: bool  # some row's first position (the pooler's input) is padding
    lengths: list[int] | None = None  # real tokens per row, known on the host (with a mask)


def _broadcast_ids(name: str, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(seq,) and (1, seq) broadcast over the batch, as transformers does."""
    _check_id_tensor(name, t, None)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() == 2 and t.shape[0] == 1 and t.shape[1] == shape[1]:
        t = t.expand(shape)
    if t.shape != shape:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}; input_ids has {tuple(shape)} (a (1, seq) or "
            "(seq,) tensor is broadcast over the batch)"
        )
    return t


def prepare_inputs(
    config: BertConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    device: torch.device,
) -> PreparedInputs:
    """Validate every input before any kernel runs.

    The range checks, mask flags and row lengths come back in one device-to-host read; inputs
    that arrive on the CPU (as the tokenizer makes them) are checked there before they move,
    so the device is never waited for.
    """
    _check_id_tensor("input_ids", input_ids, None)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    batch, seq = input_ids.shape
    if batch == 0 or seq == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)})")
    if position_ids is None and seq > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {seq} exceeds max_position_embeddings "
            f"({config.max_position_embeddings}); truncate the input"
        )
    shape = input_ids.shape
    home = input_ids.device  # checks run where the ids are
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    else:
        token_type_ids = _broadcast_ids("token_type_ids", token_type_ids, shape).to(home)
    if position_ids is None:
        position_ids = torch.arange(seq, device=home).expand(batch, seq)
    else:
        position_ids = _broadcast_ids("position_ids", position_ids, shape).to(home)
    am = None
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask)}")
        if attention_mask.shape != shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; it must match "
                f"input_ids {tuple(shape)} (1 = real token, 0 = padding)"
            )
        am = attention_mask.to(home)
    if torch.compiler.is_compiling():
        return _prepare_traced(config, input_ids, am, token_type_ids, position_ids, device)
    # Every range check, mask flag and row length in one device-to-host copy.
    stacked = torch.stack([t.reshape(-1).long() for t in (input_ids, token_type_ids, position_ids)])
    low, high = torch.aminmax(stacked, dim=1)
    stats = [low, high]
    if am is not None:
        real = am != 0
        flags = [(real & (am != 1)).any(), (~real).any(), (~real[:, 0]).any()]
        stats += [torch.stack(flags).long(), real.sum(dim=1)]
    values = torch.cat(stats).tolist()
    limits = (
        ("input_ids", config.vocab_size, "vocab_size"),
        ("token_type_ids", config.type_vocab_size, "type_vocab_size"),
        ("position_ids", config.max_position_embeddings, "max_position_embeddings"),
    )
    for i, (name, limit, what) in enumerate(limits):
        lo, hi = values[i], values[3 + i]
        if lo < 0 or hi >= limit:
            raise ValueError(
                f"{name} contains {lo if lo < 0 else hi}; allowed range is [0, {limit}) "
                f"({what}={limit})"
            )
    has_padding = first_padded = False
    lengths = mask = None
    if am is not None:
        if values[6]:
            raise ValueError("attention_mask must hold only 0 and 1 (or True/False)")
        has_padding, first_padded = bool(values[7]), bool(values[8])
        lengths = values[9:]
        mask = real.to(device)
    input_ids, token_type_ids, position_ids = (
        t.to(device) for t in (input_ids, token_type_ids, position_ids)
    )
    return PreparedInputs(
        input_ids, mask, token_type_ids, position_ids, has_padding, first_padded, lengths
    )


def _prepare_traced(config, input_ids, am, token_type_ids, position_ids, device):
    """prepare_inputs inside torch.compile, where reading values back would break the graph:
    the range and mask checks become asserts on the device (``torch._assert_async``, the
    message naming the limit), and a given mask is taken to hold padding (the padded layout
    runs; without the host's row lengths there is no packing)."""
    limits = (
        ("input_ids", input_ids, config.vocab_size, "vocab_size"),
        ("token_type_ids", token_type_ids, config.type_vocab_size, "type_vocab_size"),
        ("position_ids", position_ids, config.max_position_embeddings, "max_position_embeddings"),
    )
    for name, t, limit, what in limits:
        inside = ((t >= 0) & (t < limit)).all()
        torch._assert_async(inside, f"{name} holds values outside [0, {limit}) ({what})")
    mask = None
    if am is not None:
        real = am != 0
        torch._assert_async(
            (real == (am == 1)).all(), "attention_mask must hold only 0 and 1 (or True/False)"
        )
        mask = real.to(device)
    input_ids, token_type_ids, position_ids = (
        t.to(device) for t in (input_ids, token_type_ids, position_ids)
    )
    has_padding = mask is not None
    return PreparedInputs(input_ids, mask, token_type_ids, position_ids, has_padding, has_padding)


class BertModel(nn.Module):
    """A BERT encoder that answers like ``transformers.BertModel``, on fused kernels."""

    def __init__(
        self,
        config: BertConfig,
        backend: str = "auto",
        add_pooling_layer: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = True,
        fused_epilogues: bool = False,
    ):
        """``cuda_graphs``: on CUDA, inference (eval mode, no grad) replays captured graphs of
        the padding-free encoder (see ``bertfast.graphs``); False runs every forward eagerly.
        ``fused_epilogues``: on the Triton backend, the padding-free encoder runs bias + GELU
        and bias + (dropout) + residual + LayerNorm inside the GEMMs (``ops.linear_epilogue``),
        in inference and in training."""
        super().__init__()
        if backend not in BACKEND_CHOICES:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKEND_CHOICES}")
        if device is None or torch.device(device).type != "meta":
            # Fail now, with the reason, if it cannot run; import its kernels while at it.
            ops.load_kernels(ops.resolve_backend(backend, device, config.head_dim))
        self.config = config
        self.requested_backend = backend
        kw = dict(device=device, dtype=dtype)
        self.embeddings = BertEmbeddings(config, **kw)
        self.layers = nn.ModuleList(
            BertLayer(config, **kw) for _ in range(config.num_hidden_layers)
        )
        self.pooler = (
            nn.Linear(config.hidden_size, config.hidden_size, **kw) if add_pooling_layer else None
        )
        self._resolved: dict[torch.device | tuple, str] = {}  # by device (and mode for auto)
        self.cuda_graphs = cuda_graphs
        self.fused_epilogues = fused_epilogues
        self.graphs = None  # bertfast.graphs.PackedGraphs, made on the first graph forward
        # (device, dtype, backend, autocast dtype) whose layouts and dtypes passed the checks
        self._validated: set[tuple] = set()
        self.init_weights()
        if self.device.type != "meta":
            self._resolve_backends(self.device)  # now, not inside a later trace

    @torch.no_grad()
    def init_weights(self) -> None:
        """Hugging Face's initialisation: N(0, initializer_range), zero biases, unit norms."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
                if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    @property
    def device(self) -> torch.device:
        return self.embeddings.word_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.word_embeddings.weight.dtype

    @property
    def backend(self) -> str:
        """The backend that runs on the model's current device. With ``auto``, a forward in
        train mode runs on the first backend of ``AUTO_PRIORITY`` whose kernels all have a
        backward (and dropout), and a forward under torch.autocast on the first that takes
        autocast's mixed dtypes: the CUDA kernels do neither, Triton's do both."""
        device = self.device
        if device not in self._resolved:
            self._resolve_backends(device)
        backend = self._resolved[device]
        if self.requested_backend != "auto" or backend == "torch":
            return backend
        training, autocast = self.training, _autocast_dtype(device) is not None
        if not (training or autocast):
            return backend
        return self._resolved[(training, autocast, device)]

    def _resolve_backends(self, device: torch.device, backend: str | None = None) -> None:
        """The backend of every mode on ``device``, resolved and its kernels imported at once
        (eagerly: a torch.compile trace then only reads the table, which it does not change);
        ``backend`` stands for what ``auto`` resolved to (tests fake one)."""
        if backend is None:
            backend = ops.resolve_backend(self.requested_backend, device, self.config.head_dim)
        ops.load_kernels(backend)
        self._resolved[device] = backend
        if self.requested_backend != "auto":
            return
        for training, autocast in ((True, False), (False, True), (True, True)):
            fits = (b for b in ops.AUTO_PRIORITY if self._auto_fits(b, device, training, autocast))
            chosen = backend if backend == "torch" else next(fits)
            ops.load_kernels(chosen)
            self._resolved[(training, autocast, device)] = chosen

    def _apply(self, fn, *args, **kwargs):
        # After .to() / .cuda(): resolve for the new device now, not inside a later trace.
        module = super()._apply(fn, *args, **kwargs)
        device = self.device
        if device.type != "meta" and device not in self._resolved:
            try:
                self._resolve_backends(device)
            except RuntimeError:
                pass  # an explicit backend that cannot run there says so on the first forward
        return module

    def _auto_fits(self, backend: str, device: torch.device, training: bool, autocast: bool):
        if backend == "torch":
            return True
        if ops.BACKEND_INFO[backend].reason(device, self.config.head_dim) is not None:
            return False
        if training and not set(ops.OPS) <= set(ops.KERNEL_BACKWARD_OPS.get(backend, ())):
            return False
        return not (autocast and backend == "cuda")  # the CUDA kernels take one dtype

    def int8_linears(self) -> list[nn.Linear]:
        """The GEMMs ``bertfast.cpu_quantize`` runs in int8: each layer's four (the pooler and
        embeddings stay fp32)."""
        return [
            linear
            for layer in self.layers
            for linear in (layer.qkv, layer.attention_output, layer.intermediate, layer.output)
        ]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_dict: bool = True,
        output_hidden_states: bool = False,
        compute_padded_positions: bool = False,
        compute_pooler_output: bool = True,
    ) -> BertModelOutput | tuple:
        """Encode a batch; keyword names as in ``transformers.BertModel``.

        Padded positions of the output are unspecified: kernel backends, and the torch backend
        in CPU inference, skip them (zeros come back) unless ``compute_padded_positions`` asks
        to compute them as Hugging Face does (each attends to the real tokens), for callers
        whose result depends on them. ``compute_pooler_output=False`` skips the pooler
        (``pooler_output`` is None) for callers that pool themselves, as sentence embeddings do.
        """
        backend = self.backend
        prepared = prepare_inputs(
            self.config, input_ids, attention_mask, token_type_ids, position_ids, self.device
        )
        input_ids, mask, token_type_ids, position_ids, has_padding, first_padded, lengths = prepared
        # Left padding: the pooler reads position 0, which the padding-free path skips.
        pooling = compute_pooler_output and self.pooler is not None
        compute_padded_positions |= first_padded and pooling
        # Inside torch.compile the row lengths are not read back: no packing, the padded form.
        compute_padded_positions |= has_padding and lengths is None
        if backend != "torch" and self.training and torch.is_grad_enabled():
            # Training runs these ops on the backend.
            used = ("embedding_layer_norm", "attention", "bias_residual_layer_norm", "bias_gelu")
            if self.fused_epilogues and backend == "triton":
                used += ("linear_epilogue",)
            lacking = [op for op in used if op not in ops.KERNEL_BACKWARD_OPS.get(backend, ())]
            # Dropout runs inside the embedding, attention and residual LayerNorm kernels
            # (Philox masks drawn again by their backwards).
            if lacking:
                names = ", ".join(repr(op) for op in lacking)
                verb = "has" if len(lacking) == 1 else "have"
                kernels = "kernel" if len(lacking) == 1 else "kernels"
                trains = [
                    b
                    for b in ("triton",)
                    if b != backend
                    and set(used) <= set(ops.KERNEL_BACKWARD_OPS.get(b, ()))
                    and ops.BACKEND_INFO[b].reason(self.device, self.config.head_dim) is None
                ]
                instead = " or ".join(f"backend={b!r}" for b in (*trains, "torch"))
                raise NotImplementedError(
                    f"cannot train on backend={backend!r}: the {backend} {kernels} {names} "
                    f"{verb} no backward pass; train with {instead}"
                )
        graphs = None
        if not (output_hidden_states or (has_padding and compute_padded_positions)):
            graphs = self._graphs_for_forward(backend)
        if graphs is not None:
            result = graphs.run(prepared)
            if result is not None:
                output = BertModelOutput(*result)
                if not pooling:
                    output.pooler_output = None
                return output if return_dict else output.to_tuple()
        validate = self._first_forward_on(backend)
        all_hidden: list[torch.Tensor] = []
        # The torch backend packs too for CPU inference with padding: every GEMM, LayerNorm
        # and GELU runs on the real tokens only (a sorted batch of 32 mixed-length texts is
        # ~15 % padding), the attention on a zero-padded grid (``ops.attention``).
        torch_packs = (
            backend == "torch"
            and has_padding
            and lengths is not None
            and self.device.type == "cpu"
            and not torch.is_grad_enabled()
        )
        if (backend == "torch" and not torch_packs) or (has_padding and compute_padded_positions):
            hidden = self.encode_padded(
                input_ids,
                token_type_ids,
                position_ids,
                mask if has_padding else None,
                all_hidden if output_hidden_states else None,
            )
        else:
            batch, seq = input_ids.shape
            packed = (
                PackedBatch.from_mask(mask, lengths)
                if has_padding
                else PackedBatch.dense(batch, seq, input_ids.device)
            )
            hidden = self.encode_packed(
                packed.pack(input_ids),
                packed.pack(token_type_ids),
                packed.pack(position_ids),
                packed.cu_seqlens,
                packed.max_seqlen,
                validate=validate,
                collect=all_hidden if output_hidden_states else None,
            )
            hidden = packed.unpack(hidden)
            all_hidden = [packed.unpack(h) for h in all_hidden]
        if not torch.compiler.is_compiling():  # a trace must not change what it guards on
            self._validated.add(self._validation_key(backend))
        pooled = self.pool(hidden) if pooling else None
        hidden_states = (*all_hidden, hidden) if output_hidden_states else None
        output = BertModelOutput(hidden, pooled, hidden_states)
        return output if return_dict else output.to_tuple()

    def _first_forward_on(self, backend: str) -> bool:
        """Layouts of weights are checked on the first forward per device, dtype and backend;
        later forwards skip the per-op checks (the inputs are validated at the edge). A trace
        always checks (its checks cost nothing at run time)."""
        if torch.compiler.is_compiling():
            return True
        return self._validation_key(backend) not in self._validated

    def _validation_key(self, backend: str) -> tuple:
        # Autocast changes the activations' dtype beside the parameters': checked anew.
        return (self.device, self.dtype, backend, _autocast_dtype(self.device))

    def _graphs_for_forward(self, backend: str):
        """The graph runner when this forward may replay a graph, else None."""
        if not self.cuda_graphs or backend == "torch":
            return None  # the torch backend is the eager reference (its packed form syncs)
        custom = self.graphs is not None and self.graphs.capture_is_custom
        if self.device.type != "cuda" and not custom:  # a test's capture seam runs anywhere
            return None
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None
        if _autocast_dtype(self.device) is not None:
            return None  # graphs are captured in the model's dtype: autocast runs eagerly
        if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None  # already inside someone's capture: run the ops into it
        if self.graphs is None:
            self.graphs = PackedGraphs(self)
        return self.graphs

    def enable_cuda_graphs(self, **kwargs) -> None:
        """Replace the graph runner (keyword arguments of ``bertfast.graphs.PackedGraphs``:
        ``buckets``, ``max_graphs``, ``capture``) and turn graphs on."""
        self.cuda_graphs = True
        self.graphs = PackedGraphs(self, **kwargs)

    def encode_packed(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        validate: bool = True,
        collect: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The encoder over packed tokens (total_tokens,) described by ``cu_seqlens``.

        No host sync happens here (the graph runner captures it). ``max_seqlen`` may be a bound
        above the longest sequence; ``collect`` receives each layer's input.
        """
        fused = self.fused_epilogues and self.backend == "triton"
        layout = dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, fused_epilogues=fused)
        ids = (input_ids, token_type_ids, position_ids)
        return self._encode(*ids, max_seqlen, validate, collect, **layout)

    def attention_backend(self, max_seqlen: int) -> str:
        """The attention's backend for sequences up to ``max_seqlen``: the model's, except
        where ``auto`` measured another faster (``ops.AUTO_ATTENTION_SWITCH``)."""
        backend = self.backend
        if self.requested_backend != "auto" or self.training:
            return backend
        return ops.auto_attention_backend(backend, self.device, self.config.head_dim, max_seqlen)

    def encode_padded(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        collect: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The encoder over the whole (batch, seq) grid, padding masked in attention.

        Inputs must already be validated (``prepare_inputs``); no host sync happens here, so
        the call can be captured in a CUDA graph. ``collect`` receives each layer's input.
        """
        ids = (input_ids, token_type_ids, position_ids)
        seq = input_ids.shape[1]
        return self._encode(*ids, seq, True, collect, key_padding_mask=key_padding_mask)

    def _encode(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
        longest: int,
        validate: bool,
        collect: list[torch.Tensor] | None,
        **layout,
    ) -> torch.Tensor:
        """Embeddings, then every layer with the attention ``layout`` (padded or packed);
        ``longest`` bounds a sequence's length (``auto`` picks the attention by it)."""
        backend = self.backend
        attention_backend = self.attention_backend(longest)
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, backend, validate)
        for layer in self.layers:
            if collect is not None:
                collect.append(hidden)
            hidden = layer(
                hidden, backend, validate=validate, attention_backend=attention_backend, **layout
            )
        return hidden

    def pool(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """tanh(dense(first token)), or None without a pooler."""
        if self.pooler is None:
            return None
        return torch.tanh(self.pooler(hidden[:, 0]))

    # Checkpoints ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        backend: str = "auto",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        cuda_graphs: bool = True,
        fused_epilogues: bool = False,
        quantize: str | None = None,
    ) -> BertModel:
        """Load a Hugging Face BERT checkpoint directory (safetensors or PyTorch file);
        ``cuda_graphs`` and ``fused_epilogues`` as in the constructor; ``quantize="int8"``
        runs the layers' GEMMs in int8 on the CPU (``bertfast.cpu_quantize``)."""
        from bertfast import cpu_quantize
        from bertfast.weights import load_pretrained_encoder

        cpu_quantize.check_quantize(quantize, dtype, device)
        model = load_pretrained_encoder(cls, name_or_path, backend, dtype, device)
        model.cuda_graphs, model.fused_epilogues = cuda_graphs, fused_epilogues
        return cpu_quantize.quantize_(model, quantize) if quantize else model

    @classmethod
    def from_hf_state_dict(
        cls,
        config: BertConfig,
        hf_state: dict[str, torch.Tensor],
        backend: str = "auto",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> BertModel:
        """Build from Hugging Face-named weights held in memory (``bert.`` prefix optional)."""
        from bertfast.weights import encoder_from_hf_state_dict

        ops.load_kernels(ops.resolve_backend(backend, device, config.head_dim))
        return encoder_from_hf_state_dict(cls, config, hf_state, backend, dtype, device)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json and model.safetensors that ``transformers.BertModel`` loads."""
        from bertfast.weights import save_pretrained

        save_pretrained(path, self.config, self.hf_state_dict(), ["BertModel"])

    def hf_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The weights under Hugging Face's names (query/key/value split again)."""
        from bertfast.weights import bertfast_to_hf

        return bertfast_to_hf(self.state_dict(), prefix)
