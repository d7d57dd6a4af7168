"""Training a model on the Triton backend (dropout 0 unless said): gradients of every parameter against the
torch backend and transformers, optimizer steps in lockstep; what is still refused names the
setting or op that lacks a backward."""

import pytest
import torch

from bertfast import BertModel
from bertfast.weights import bertfast_to_hf
from tests.helpers import assert_close, random_batch, random_hf_bert

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


# Lengths 5, 2 and 1: what the slow paths (dropout, torch.compile) need of a mixed batch.
SMALL = (3, 5)


def _batch(batch=3, seq=13):
    ids, types, mask = random_batch(99, batch=batch, seq=seq)
    ids[0, 3] = ids[1, 0] = 0  # the padding id among real tokens: its row gets no gradient
    return ids, types, mask


def _loss(last_hidden_state, pooler_output, mask):
    weights = torch.linspace(-1, 1, last_hidden_state.shape[-1])
    real = mask.bool()
    return (last_hidden_state[real] * weights).sum() + pooler_output.square().sum()


def _grads(model, hf=False, shape=(3, 13)):
    ids, types, mask = _batch(*shape)
    model.zero_grad()
    if hf:
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    else:
        out = model(ids, attention_mask=mask, token_type_ids=types)
    loss = _loss(out.last_hidden_state, out.pooler_output, mask)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_model_gradients_match_the_torch_backend_and_transformers(tmp_path):
    path, hf = random_hf_bert(tmp_path, **NO_DROPOUT)
    triton_model = BertModel.from_pretrained(path, backend="triton").train()
    torch_model = BertModel.from_pretrained(path, backend="torch").train()
    loss, grads = _grads(triton_model)
    torch_loss, torch_grads = _grads(torch_model)
    assert_close(loss, torch_loss, atol=1e-4, rtol=1e-5, what="loss")
    assert grads.keys() == torch_grads.keys()
    for name, expected in torch_grads.items():
        assert_close(grads[name], expected, atol=1e-4, rtol=1e-4, what=name)
    assert (grads["embeddings.word_embeddings.weight"][0] == 0).all()
    hf_loss, hf_grads = _grads(hf.train(), hf=True)
    assert_close(loss, hf_loss, atol=1e-4, rtol=1e-5, what="loss vs transformers")
    ours_as_hf = bertfast_to_hf(grads)
    assert ours_as_hf.keys() == hf_grads.keys()
    for name, expected in hf_grads.items():
        assert_close(ours_as_hf[name], expected, atol=1e-4, rtol=1e-4, what=f"hf {name}")


def test_optimizer_steps_match_the_torch_backend(tmp_path):
    path, _ = random_hf_bert(tmp_path, **NO_DROPOUT)
    models = [BertModel.from_pretrained(path, backend=b).train() for b in ("triton", "torch")]
    # SGD, not Adam: Adam would blow the key bias's gradient (0 up to rounding: softmax ignores
    # it) up to full-size steps of noise.
    optimizers = [torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9) for m in models]
    for step in range(3):
        losses = []
        for model, optimizer in zip(models, optimizers):
            loss, _ = _grads(model, shape=SMALL)
            optimizer.step()
            losses.append(loss)
        assert_close(losses[0], losses[1], atol=1e-4, rtol=1e-5, what=f"loss at step {step}")
    for (name, ours), theirs in zip(models[0].named_parameters(), models[1].parameters()):
        assert_close(ours, theirs, atol=1e-4, rtol=1e-5, what=f"{name} after 3 steps")


def test_bert_dropout_trains_and_the_refusal_names_what_lacks_a_backward(tmp_path, monkeypatch):
    """transformers' default dropout (0.1 hidden and attention) trains on Triton: the same seed
    gives the same loss and gradients, another seed another loss; an op without a backward on
    the backend is named in the refusal. One layer: the interpreter draws every mask."""
    path, _ = random_hf_bert(tmp_path, num_hidden_layers=1)
    model = BertModel.from_pretrained(path, backend="triton").train()
    ids = torch.randint(1, 99, (2, 3))

    def step(seed):
        torch.manual_seed(seed)
        model.zero_grad()
        loss = model(ids).last_hidden_state.square().mean()
        loss.backward()
        return loss.detach(), model.layers[0].qkv.weight.grad.clone()

    (loss, grad), (again, grad_again), (other, _) = step(1), step(1), step(2)
    assert torch.equal(loss, again) and torch.equal(grad, grad_again)
    assert not torch.equal(loss, other) and grad.abs().sum() > 0
    from bertfast import ops

    monkeypatch.setitem(ops.KERNEL_BACKWARD_OPS, "triton", ("bias_gelu",))
    with pytest.raises(NotImplementedError) as refused:
        model(ids)
    assert str(refused.value) == (
        "cannot train on backend='triton': the triton kernels 'embedding_layer_norm', "
        "'attention', 'bias_residual_layer_norm' have no backward pass; train with "
        "backend='torch'"
    )
    monkeypatch.undo()
    # A model whose backend resolved to the CUDA kernels (none has a backward) is pointed at
    # the backends that train here (the resolution is faked: this machine has no GPU).
    model._resolved[model.device] = "cuda"
    with pytest.raises(NotImplementedError) as refused:
        model(ids)
    assert str(refused.value) == (
        "cannot train on backend='cuda': the cuda kernels 'embedding_layer_norm', 'attention', "
        "'bias_residual_layer_norm', 'bias_gelu' have no backward pass; train with "
        "backend='triton' or backend='torch'"
    )


def test_hidden_dropout_inside_the_kernel_trains_a_layer_as_torch_ops_with_its_masks(
    tmp_path, monkeypatch
):
    """Hidden dropout (0.1) runs inside the residual LayerNorm kernel, the bias still fused:
    a layer's output and the gradient of its input and every parameter equal plain torch ops
    (F.linear, the attention reference, GELU, LayerNorm) with the masks the kernel draws from
    the seeds it took; two sub-layers take two seeds."""
    import importlib

    import torch.nn.functional as F

    from bertfast import ops
    from bertfast.triton.hidden_dropout import dropout_mask

    op_module = importlib.import_module("bertfast.ops.bias_residual_layer_norm")
    seeds = []
    real_draw = op_module.draw_seed
    monkeypatch.setattr(op_module, "draw_seed", lambda: seeds.append(real_draw()) or seeds[-1])
    path, _ = random_hf_bert(tmp_path, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0)
    model = BertModel.from_pretrained(path, backend="triton").train()
    layer = model.layers[0]
    hidden = torch.randn(2, 7, model.config.hidden_size, requires_grad=True)
    out = layer(hidden, "triton")
    weights = torch.randn(out.shape)
    params = [hidden, *layer.parameters()]
    grads = torch.autograd.grad((out * weights).sum(), params)
    assert len(seeds) == 2

    p, eps = 0.1, layer.attention_norm.eps

    def dropped(x, seed):
        kept = dropout_mask(x.shape, p, int(seed), x.device)
        return torch.where(kept, x / (1 - p), 0.0)

    def norm(x, ln):
        return F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, eps)

    qkv = F.linear(hidden, layer.qkv.weight, layer.qkv.bias)
    context = ops.attention_reference(qkv, layer.num_heads)
    attn = F.linear(context, layer.attention_output.weight, layer.attention_output.bias)
    mid = norm(dropped(attn, seeds[0]) + hidden, layer.attention_norm)
    inter = F.gelu(F.linear(mid, layer.intermediate.weight, layer.intermediate.bias))
    ffn = F.linear(inter, layer.output.weight, layer.output.bias)
    expected = norm(dropped(ffn, seeds[1]) + mid, layer.output_norm)
    expected_grads = torch.autograd.grad((expected * weights).sum(), params)
    assert_close(out, expected, atol=2e-5, rtol=1e-5, what="layer output")
    names = ["input", *(n for n, _ in layer.named_parameters())]
    for name, g, e in zip(names, grads, expected_grads):
        assert_close(g, e, atol=1e-4, rtol=1e-4, what=f"d{name}")
    assert (grads[0] != 0).all()  # every input element gets a gradient through the residual


def test_fused_gemm_epilogues_train_as_the_separate_kernels(tmp_path, monkeypatch):
    """Fused epilogues (bias + GELU and bias + dropout + residual + LayerNorm inside the GEMMs)
    train: with BERT's dropout and the same seed (the fused epilogue draws the residual
    LayerNorm kernel's masks), loss and every parameter's gradient equal the separate
    kernels'; in eval mode with grad enabled too, and dropout 0 then equals the torch backend.
    The dropout part on one layer (its four dropouts): the interpreter draws every mask."""
    from bertfast import ops

    fused_calls = []
    real_linear_epilogue = ops.linear_epilogue
    monkeypatch.setattr(
        ops,
        "linear_epilogue",
        lambda *a, **k: fused_calls.append(k) or real_linear_epilogue(*a, **k),
    )
    path, _ = random_hf_bert(tmp_path, num_hidden_layers=1)
    models = [
        BertModel.from_pretrained(path, backend="triton", fused_epilogues=fused).train()
        for fused in (True, False)
    ]
    ids, _, mask = _batch(*SMALL)
    weights = torch.linspace(-1, 1, models[0].config.hidden_size)
    results = []
    for model in models:
        torch.manual_seed(7)
        model.zero_grad()
        out = model(ids, attention_mask=mask)
        loss = (out.last_hidden_state * weights).sum() + out.pooler_output.square().sum()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss, grads), (plain_loss, plain) = results
    # The layer's attention output (LayerNorm), FFN up (GELU) and FFN down (LayerNorm).
    assert [k["dropout_p"] for k in fused_calls] == [0.1, 0.0, 0.1]
    assert_close(loss, plain_loss, atol=1e-4, rtol=1e-5, what="loss with dropout")
    for name, expected in plain.items():
        assert_close(grads[name], expected, atol=1e-4, rtol=1e-4, what=f"fused {name}")
    torch.manual_seed(8)
    assert not torch.equal(models[0](ids).last_hidden_state, models[0](ids).last_hidden_state)

    path, _ = random_hf_bert(tmp_path / "no_dropout", **NO_DROPOUT)
    fused = BertModel.from_pretrained(path, backend="triton", fused_epilogues=True)  # eval
    reference = BertModel.from_pretrained(path, backend="torch")
    loss, grads = _grads(fused, shape=SMALL)
    ref_loss, ref_grads = _grads(reference, shape=SMALL)
    assert_close(loss, ref_loss, atol=1e-4, rtol=1e-5, what="eval-mode loss")
    for name, expected in ref_grads.items():
        assert_close(grads[name], expected, atol=1e-4, rtol=1e-4, what=f"eval {name}")


def _compiled_loss(mask, types):
    """The loss of a padded training forward, written for torch.compile(fullgraph=True): the
    real tokens weighted, not selected (a boolean index breaks a graph)."""

    def loss_of(m, ids):
        out = m(ids, attention_mask=mask, token_type_ids=types, compute_padded_positions=True)
        weights = torch.linspace(-1, 1, out.last_hidden_state.shape[-1])
        real = mask[..., None].to(out.last_hidden_state.dtype)
        pooled = out.pooler_output.square().sum()
        return (out.last_hidden_state * real * weights).sum() + pooled

    return loss_of


def _step(fn, model, ids):
    """(loss, gradient of every parameter) of ``fn(model, ids)``, seeded as every call here."""
    torch.manual_seed(5)
    model.zero_grad()
    loss = fn(model, ids)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compiled_training_step_is_one_graph_and_matches_eager(tmp_path):
    """torch.compile(fullgraph=True) traces a training forward on Triton with BERT's dropout
    (seeds drawn inside the trace, the padded layout since row lengths are not read back) in
    one graph; its loss and every gradient equal the eager padded forward with the same seed;
    bad ids fail the traced device asserts. One layer (its dropouts draw seeds of their own)
    and two short rows: the interpreter draws every mask. Without dropout: the slow test below."""
    path, _ = random_hf_bert(tmp_path, num_hidden_layers=1)
    model = BertModel.from_pretrained(path, backend="triton").train()
    ids, types, mask = _batch(2, 4)  # lengths 4 and 1
    loss_of = _compiled_loss(mask, types)
    # fullgraph=True: a graph break would raise instead of splitting the trace
    compiled = torch.compile(loss_of, backend="aot_eager", fullgraph=True)
    (loss, ours), (eager_loss, eager) = _step(compiled, model, ids), _step(loss_of, model, ids)
    assert_close(loss, eager_loss, atol=1e-5, rtol=1e-6, what="compiled loss")
    for name, expected in eager.items():
        assert_close(ours[name], expected, atol=1e-5, rtol=1e-5, what=f"compiled {name}")
    bad = ids.clone()
    bad[1, 2] = model.config.vocab_size
    with pytest.raises(RuntimeError, match=r"input_ids holds values outside \[0, 99\)"):
        compiled(model, bad)


@pytest.mark.slow
def test_compiled_training_step_without_dropout_equals_transformers_and_compiles_once(tmp_path):
    """The compiled training step of the test above without dropout: a second call compiles
    nothing again (the first changed nothing the trace guards on) and gives the same loss; loss
    and every gradient equal transformers'."""
    from torch._dynamo.testing import CompileCounterWithBackend

    path, hf = random_hf_bert(tmp_path, num_hidden_layers=1, **NO_DROPOUT)
    model = BertModel.from_pretrained(path, backend="triton").train()
    ids, types, mask = _batch(*SMALL)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_compiled_loss(mask, types), backend=counter, fullgraph=True)
    loss, ours = _step(compiled, model, ids)
    compiles = counter.frame_count
    again, _ = _step(compiled, model, ids)
    assert counter.frame_count == compiles and torch.equal(loss, again)
    hf_loss, hf_grads = _grads(hf.train(), hf=True, shape=SMALL)
    assert_close(loss, hf_loss, atol=1e-4, rtol=1e-5, what="compiled loss vs transformers")
    ours_as_hf = bertfast_to_hf(ours)
    for name, expected in hf_grads.items():
        assert_close(ours_as_hf[name], expected, atol=1e-4, rtol=1e-4, what=f"hf {name}")


def _saved_activations(model, run):
    """(bytes, shapes) of the distinct non-parameter storages autograd saves during ``run``."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = (storage.nbytes(), tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(n for n, _ in seen.values()), [shape for _, shape in seen.values()]


def test_saved_activations_are_what_the_backward_needs(tmp_path):
    """A training forward on Triton (dropout on) keeps no score, probability or dropout matrix;
    per layer and real token it keeps the inputs of the QKV, attention-output and FFN-up GEMMs
    (3h), the fused QKV (3h), the attention output (h), the two LayerNorm inputs (2h) and the
    pre-GELU activation (i; the GELU output, the FFN-down GEMM's input, is recomputed): 9h + i
    floats, plus one LSE per head and token and the seeds; far less than transformers keeps
    for the same batch."""
    seq, hidden, inter, heads = 24, 32, 64, 2
    path, hf = random_hf_bert(
        tmp_path, hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads
    )
    model = BertModel.from_pretrained(path, backend="triton").train()
    ids = torch.randint(1, 99, (2, seq))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    tokens = int(mask.sum())
    ours, shapes = _saved_activations(model, lambda: model(ids, attention_mask=mask))
    assert not [s for s in shapes if len(s) >= 2 and s[-2:] == (seq, seq)], shapes
    layers = model.config.num_hidden_layers
    per_layer = tokens * ((9 * hidden + inter) * 4 + heads * 4) + 64  # + seeds, offsets
    outside = tokens * (2 * hidden * 4 + 3 * 8) + 2 * hidden * 4 * 2  # embeddings, ids, pooler
    assert ours <= layers * per_layer + outside, (ours, layers * per_layer + outside)
    theirs, hf_shapes = _saved_activations(
        hf, lambda: hf.train()(input_ids=ids, attention_mask=mask)
    )
    assert [s for s in hf_shapes if len(s) >= 2 and s[-2:] == (seq, seq)]  # the probabilities
    assert ours < 0.75 * theirs, (ours, theirs)


def test_autocast_training_follows_transformers_under_autocast(tmp_path):
    """Under torch.autocast (float16 on the CPU; bf16 on a GPU is in tests/gpu) the kernels take
    autocast's layout, float16 GEMM outputs beside float32 parameters and residual stream: the
    outputs have transformers' dtypes, and every gradient, fused epilogues or not, is within 3x
    transformers' own autocast error of the fp32 gradients."""
    path, hf = random_hf_bert(tmp_path, **NO_DROPOUT)
    ids, types, mask = _batch()

    def run(model, autocast, hf_model=False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            if hf_model:
                out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            else:
                out = model(ids, attention_mask=mask, token_type_ids=types)
        loss = _loss(out.last_hidden_state.float(), out.pooler_output.float(), mask)
        loss.backward()
        dtypes = (out.last_hidden_state.dtype, out.pooler_output.dtype)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return loss.detach(), dtypes, grads if hf_model else bertfast_to_hf(grads)

    hf.train()
    ref_loss, _, ref = run(hf, autocast=False, hf_model=True)
    hf_loss, hf_dtypes, theirs = run(hf, autocast=True, hf_model=True)
    assert hf_dtypes == (torch.float32, torch.float16)
    for fused in (False, True):
        model = BertModel.from_pretrained(path, backend="triton", fused_epilogues=fused).train()
        loss, dtypes, ours = run(model, autocast=True)
        assert dtypes == hf_dtypes, f"fused={fused}"
        loss_err, hf_loss_err = abs(loss - ref_loss).item(), abs(hf_loss - ref_loss).item()
        assert loss_err <= 3 * hf_loss_err + 1e-4, (fused, loss_err, hf_loss_err)
        for name, expected in ref.items():
            err = (ours[name] - expected).abs().max().item()
            hf_err = (theirs[name] - expected).abs().max().item()
            scale = expected.abs().max().item()
            assert err <= 3 * hf_err + 1e-5 * (1 + scale), (
                f"fused={fused} {name}: {err:.3e} > 3 x {hf_err:.3e}"
            )


def test_auto_trains_on_the_kernels_that_have_a_backward(tmp_path):
    """backend='auto' resolved to the CUDA kernels (none has a backward, all take one dtype)
    trains, and runs under autocast, on Triton's, and serves plain inference on CUDA's; the
    resolution to 'cuda' is faked (no GPU here), the training forward and its gradients are
    real."""
    path, _ = random_hf_bert(tmp_path, **NO_DROPOUT)
    model = BertModel.from_pretrained(path, backend="triton").train()
    model.requested_backend = "auto"
    model._resolve_backends(model.device, "cuda")
    assert model.backend == "triton"
    with torch.no_grad():  # train mode: dropout runs, which the CUDA kernels do not have
        assert model.backend == "triton"
    assert model.eval().backend == "cuda"
    with torch.autocast("cpu", dtype=torch.float16):  # mixed dtypes: not the CUDA kernels
        assert model.backend == "triton"
    model.train()
    loss, grads = _grads(model)
    torch_loss, torch_grads = _grads(BertModel.from_pretrained(path, backend="torch").train())
    assert_close(loss, torch_loss, atol=1e-4, rtol=1e-5, what="loss")
    for name, expected in torch_grads.items():
        assert_close(grads[name], expected, atol=1e-4, rtol=1e-4, what=name)
