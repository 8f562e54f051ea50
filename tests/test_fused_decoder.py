"""The fused decoder gives transformers' logits, and steps aside when it can't."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from arbridge.engine import matmul_layouts
from arbridge.engine.fused_decoder import FusedDecoder
from arbridge.engine.runner import ModelRunner


def tiny_llama(**overrides) -> LlamaForCausalLM:
    config = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config.update(overrides)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    with torch.no_grad():  # biases start at zero; make them count
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.5)
    return model


def tiny_kin(kind: str, **overrides):
    """Llama's kin from today's Megatron models: Qwen2 (q/k/v biases), Qwen3 (q/k norms),
    Mistral, and the mixture-of-experts Mixtral, Qwen2-MoE (gated shared expert) and
    Qwen3-MoE, with random routers so tokens reach different experts."""
    import transformers

    config = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  head_dim=16)
    experts = dict(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32)
    config.update({
        "Mixtral": dict(num_local_experts=6, num_experts_per_tok=2, intermediate_size=32),
        "Qwen2Moe": dict(experts, shared_expert_intermediate_size=40, norm_topk_prob=False),
        "Qwen3Moe": dict(experts, norm_topk_prob=True),
    }.get(kind, {}))
    config.update(overrides)
    torch.manual_seed(0)
    model_class = getattr(transformers, f"{kind}ForCausalLM")
    model = model_class(getattr(transformers, f"{kind}Config")(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "gate.weight", "norm.weight")) or "experts" in name:
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0,
                          0.5 if "experts" not in name else 0.1)
    return model


def tiny_gpt2(**overrides) -> GPT2LMHeadModel:
    config = dict(vocab_size=97, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                  activation_function="gelu_new")
    config.update(overrides)
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**config)).eval()


MODELS = {
    "llama": tiny_llama,
    "llama-mha-biases": lambda: tiny_llama(num_key_value_heads=4, attention_bias=True,
                                           mlp_bias=True),
    "llama3-rope": lambda: tiny_llama(rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "gpt2": tiny_gpt2,
    "gpt2-megatron-gelu": lambda: tiny_gpt2(activation_function="gelu"),
    "qwen2": lambda: tiny_kin("Qwen2"),
    "qwen3": lambda: tiny_kin("Qwen3"),
    "mistral": lambda: tiny_kin("Mistral", sliding_window=None),
    "mixtral": lambda: tiny_kin("Mixtral"),
    "qwen2-moe": lambda: tiny_kin("Qwen2Moe"),
    "qwen3-moe": lambda: tiny_kin("Qwen3Moe"),
}


def run_passes(runner: ModelRunner) -> list[torch.Tensor]:
    """A ragged chunked prefill of three rows, then decode steps at different
    lengths, some with soft-prompt embeddings: every logit the engine would read."""
    torch.manual_seed(1)
    pool = runner.new_pool(1 << 20, block_tokens=4)
    # Tables out of order and interleaved: every read goes through the block tables.
    free = pool.allocate(12)
    tables = [free[0::3][::-1], free[1::3], free[2::3]]
    prompts = [torch.randint(0, 97, (n,)) for n in (11, 5, 8)]
    outs = []
    for begin in (0, 6):  # two prefill chunks of up to 6 tokens
        chunks = [p[begin:begin + 6] for p in prompts]
        width = max(len(c) for c in chunks)
        ids = torch.zeros(3, width, dtype=torch.long)
        for i, chunk in enumerate(chunks):
            ids[i, :len(chunk)] = chunk
        starts = [min(begin, len(p)) for p in prompts]
        outs.append(runner.forward(pool, tables, ids, starts, keep=width))
    lengths = [len(p) for p in prompts]
    embeds = runner.embed(torch.randint(0, 97, (3, 1))) * 0.5  # soft-prompt-like rows
    for step in range(4):
        ids = torch.randint(0, 97, (3, 1))
        outs.append(runner.forward(pool, tables, ids, lengths,
                                   inputs_embeds=embeds if step == 2 else None))
        lengths = [n + 1 for n in lengths]
    return outs


def both_paths(model, passes=run_passes, **options):
    """(runner, what its fused decoder gives, what transformers' own forward gives)."""
    with torch.inference_mode():
        expected = passes(ModelRunner(model, context_length=128, fused=False))
        runner = ModelRunner(model, context_length=128, **options)
        runner.prepare()
        return runner, passes(runner), expected


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fused_logits_equal_the_models_own_forward(name):
    model = MODELS[name]()
    with torch.inference_mode():
        expected = run_passes(ModelRunner(model, context_length=128, fused=False))
        runner = ModelRunner(model, context_length=128)
        runner.prepare()
        family = "gpt2" if name.startswith("gpt2") else "llama"
        assert runner.fused is not None and runner.fused.family == family
        got = run_passes(runner)
    assert len(got) == len(expected) == 6
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert a.abs().max() > 0.1  # not trivially zero


def test_fusing_keeps_the_models_own_forward_working_on_the_same_weights():
    model = tiny_llama(attention_bias=True)
    ids = torch.randint(0, 97, (2, 7))
    with torch.inference_mode():
        before = model(ids).logits
        decoder = FusedDecoder.build(model)
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    attn = model.model.layers[0].self_attn
    qkv = decoder.layers[0][1]
    qkv_weight, qkv_bias = qkv.weight, qkv.bias
    # The module's weights now live inside the fused matrix.
    assert attn.q_proj.weight.data_ptr() == qkv_weight.data_ptr()
    assert attn.v_proj.bias.data_ptr() == qkv_bias[-attn.v_proj.bias.shape[0]:].data_ptr()
    # Built inside inference mode, the weights are still normal tensors: the
    # model can be trained through (projectors) after the decoder exists.
    assert not attn.q_proj.weight.is_inference()
    if torch.backends.mkldnn.is_available():  # CPU: also packed for oneDNN
        assert qkv.packed is not None and decoder.lm_head.packed is not None


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2-moe"])
@pytest.mark.parametrize("winner", ["packed", "plain", "skinny"])
def test_serving_lets_go_of_the_weight_copy_no_kernel_reads(name, winner, monkeypatch):
    """With `fused_only` (what `arbridge serve` runs), whichever layout won the
    tuning is the only copy left: the logits are unchanged, the model's own float
    weights are gone unless plain won, and a tied LM head keeps the embedding."""

    if not torch.backends.mkldnn.is_available():
        pytest.skip("one layout only: nothing to choose between")

    def pick(found, budget_s=3.0, choice=None):  # a tuning result, as a CPU measures it
        if any(winner not in p.kernels for p in found):
            pytest.skip(f"no {winner} kernel for these weights here")
        for p in found:
            p.one_row = p.few_rows = p.many_rows = p.prompt_rows = p.kernels[winner]
        return {}

    monkeypatch.setattr(matmul_layouts, "tune", pick)
    model = MODELS[name]()
    embedding = model.get_input_embeddings().weight
    with torch.inference_mode():
        expected = run_passes(ModelRunner(model, context_length=128, fused=False))
        runner = ModelRunner(model, context_length=128, fused_only=True)
        runner.prepare()
        got = run_passes(runner)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    modules = [m for _, ms in runner.fused.sources for m in ms]
    kept = [m for m in modules if m.weight is not None]
    experts = [layer.mlp.experts for layer in model.model.layers
               if hasattr(layer.mlp, "experts")] if name.endswith("moe") else []
    if winner == "packed":
        assert all(m.weight.data_ptr() == embedding.data_ptr() for m in kept)  # tied head
        assert len(kept) < len(modules)
        assert all(e.gate_up_proj is None and e.down_proj is None for e in experts)
    else:  # plain, or skinny (which reads the plain weight in place)
        assert len(kept) == len(modules)
        assert all(p.packed is None for p, _ in runner.fused.sources)
        assert all(e.gate_up_proj is not None for e in experts)


@pytest.mark.parametrize("kernel", [False, True])
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_fused_logits_in_bfloat16_stay_close_to_the_models_own(name, kernel):
    runner, got, expected = both_paths(MODELS[name]().to(torch.bfloat16),
                                       attention_kernel_bf16=kernel)
    assert (runner.attention_kernel is not None) == kernel  # opt-in in bfloat16
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), rtol=0.02, atol=0.05)


@pytest.mark.parametrize("model, reason", [
    (lambda: tiny_llama(hidden_act="gelu"), "activation"),
    (lambda: tiny_llama(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                         "factor": 2.0}), "rotary type dynamic"),
    (lambda: tiny_gpt2(scale_attn_by_inverse_layer_idx=True), "attention scaling"),
    (lambda: tiny_gpt2(reorder_and_upcast_attn=True), "reorder_and_upcast_attn"),
    (lambda: tiny_kin("Mistral", sliding_window=4), "sliding-window attention"),
])
def test_unsupported_configs_use_the_models_forward(model, reason, caplog):
    model = model()
    with caplog.at_level("INFO"):
        assert FusedDecoder.build(model) is None
    assert reason in caplog.text
    runner = ModelRunner(model, context_length=128)
    runner.prepare()
    assert runner.fused is None
    with torch.inference_mode():
        assert len(run_passes(runner)) == 6  # still serves, through transformers


def test_one_weight_copy_by_default_whatever_wins_each_case():
    """`matmul_weight_copies = 1`: whichever kernel wins one row, every case reads the
    same copy of the weights, so serving keeps exactly one (issue #32's memory bound)."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("one layout only: nothing to choose between")
    with torch.no_grad():
        decoder = FusedDecoder.build(tiny_llama())
    for projection in decoder.projections():
        chosen = {projection.one_row, projection.few_rows, projection.many_rows,
                  projection.prompt_rows}
        names = {name for name, kernel in projection.kernels.items() if kernel in chosen}
        assert len({matmul_layouts._layout(projection, name) for name in names}) == 1, names
        projection.drop_unused()
        assert (projection.weight is None) != (projection.packed is None)


@pytest.mark.parametrize("kind", ["Mistral", "Mixtral", "Qwen3"])
def test_a_sliding_window_is_kept_through_the_engines_cache(kind):
    """transformers' own forward hides what lies outside the window only when it builds
    the mask; the engine hands it one, so the window must be in it. Chunked prefill and
    decode steps through the block tables give the logits of one whole-sequence forward."""
    window = dict(sliding_window=4)
    if kind == "Qwen3":  # sliding layers by layer type: one of each
        window.update(use_sliding_window=True, layer_types=["sliding_attention",
                                                            "full_attention"])
    model = tiny_kin(kind, **window)
    ids = torch.randint(0, 97, (1, 14), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        whole = model(ids).logits[0]
        unwindowed = tiny_kin(kind)(ids).logits[0]
        runner = ModelRunner(model, context_length=128)
        runner.prepare()
        assert runner.fused is None and runner.window == 4
        pool = runner.new_pool(1 << 20, block_tokens=4)
        table = [pool.allocate(4)[::-1]]
        got = [runner.forward(pool, table, ids[:, :6], [0], keep=6),
               runner.forward(pool, table, ids[:, 6:11], [6], keep=5)]
        got += [runner.forward(pool, table, ids[:, n:n + 1], [n]) for n in range(11, 14)]
    got = torch.cat(got, dim=1)[0]
    torch.testing.assert_close(got, whole, rtol=1e-4, atol=1e-4)
    assert (whole - unwindowed).abs().max() > 1e-2  # the window matters here


@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe", "qwen3-moe"])
def test_one_stream_through_experts_equals_the_models_own(name):
    """One row a step takes the experts' no-gather path: the same logits."""
    model = MODELS[name]()
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(5))

    def steps(runner):
        pool = runner.new_pool(1 << 20, block_tokens=4)
        table = [pool.allocate(4)]
        outs = [runner.forward(pool, table, ids[:, :8], [0], keep=8)]
        return outs + [runner.forward(pool, table, ids[:, n:n + 1], [n]) for n in range(8, 12)]

    runner, got, expected = both_paths(model, steps)
    assert runner.fused is not None
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_norm_kernel_gives_transformers_rms_norm(dtype):
    """csrc/rms_norm.cpp replaces about eight ops a call; it must give LlamaRMSNorm's
    numbers (float32 statistics; in bfloat16 the scaled row rounded before the weight)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from arbridge.engine.fused_decoder import _norm_kernel

    kernel = _norm_kernel(dtype)
    if kernel is None:
        pytest.skip("no compiler here: torch's ops run instead")
    torch.manual_seed(0)
    norm = LlamaRMSNorm(576, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        for shape in [(1, 1, 576), (3, 7, 576), (2, 5, 3, 576)]:
            x = (torch.randn(shape) * 4).to(dtype)
            got, expected = kernel.rms_norm(x, norm.weight, 1e-5), norm(x)
            assert got.dtype == dtype and got.shape == x.shape
            if dtype == torch.float32:
                torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
            else:  # one bfloat16 step at most, where the sums' order rounds otherwise
                torch.testing.assert_close(got.float(), expected.float(), rtol=2 ** -7, atol=0)
                assert (got == expected).float().mean() > 0.99
        bad = torch.randn(2, 64).to(dtype)
        with pytest.raises(RuntimeError, match="weight"):
            kernel.rms_norm(bad, norm.weight, 1e-5)  # 64 columns, a weight of 576


def test_the_one_row_int8_kernel_rounds_where_torchs_int8_kernel_does():
    """The few-row kernel takes int8 weights' activations through bfloat16 and returns
    bfloat16-rounded sums, as torch._weight_int8pack_mm does (it casts in C++ now)."""
    projection = matmul_layouts.Projection(torch.randn(200, 96), None, "int8")
    if projection.skinny is None:
        pytest.skip("no compiler here")
    x = torch.randn(1, 1, 96)
    got, reference = projection._skinny(x), projection._int8(x)
    assert got.dtype == torch.float32 and got.shape == (1, 1, 200)
    assert torch.equal(got, got.bfloat16().float())  # bfloat16 numbers, in float32
    torch.testing.assert_close(got, reference, rtol=2 ** -7, atol=1e-3)
    as_bf16 = projection._skinny(x.bfloat16())  # a bfloat16 model's rows
    assert as_bf16.dtype == torch.bfloat16 and torch.equal(as_bf16.float(), got)


def test_a_change_to_any_kernel_header_makes_a_new_build(tmp_path, monkeypatch):
    """The kernels are one module built from cpu_kernels.cpp and the headers it includes:
    a cached build must not outlive an edit to any of them."""
    from arbridge.engine import native_kernels

    (tmp_path / "part.h").write_text("int part() { return 1; }\n")
    (tmp_path / "inner.h").write_text('#include "part.h"\n')
    (tmp_path / "cpu_kernels.cpp").write_text('#include <vector>\n#include "inner.h"\n')
    before = native_kernels._source_bytes(tmp_path / "cpu_kernels.cpp")
    (tmp_path / "part.h").write_text("int part() { return 2; }\n")
    after = native_kernels._source_bytes(tmp_path / "cpu_kernels.cpp")
    assert b"return 2" in after and before != after


def decode_passes(runner: ModelRunner) -> list[torch.Tensor]:
    """Prefill three rows, then decode as the scheduler does: three streams a step,
    one stream alone, and one stream verifying a draft of three tokens."""
    torch.manual_seed(2)
    pool = runner.new_pool(1 << 20, block_tokens=4)
    tables = [pool.allocate(8) for _ in range(3)]
    lengths = [9, 4, 7]
    for table, n in zip(tables, lengths, strict=True):
        runner.forward(pool, [table], torch.randint(0, 97, (1, n)), [0])
    outs = []
    for _ in range(2):
        outs.append(runner.forward(pool, tables, torch.randint(0, 97, (3, 1)), lengths))
        lengths = [n + 1 for n in lengths]
    outs.append(runner.forward(pool, tables[:1], torch.randint(0, 97, (1, 1)), lengths[:1]))
    outs.append(runner.forward(pool, tables[1:2], torch.randint(0, 97, (1, 3)), lengths[1:2],
                               keep=3))
    return outs


def q8_reference(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x W^T as the int8-activations kernel defines it, in exact integers where it is
    exact: x in blocks of 32 (d = max|x| / 127, round(x / d)), int8 W, one scale a row."""
    pad = (-x.shape[1]) % 32
    blocks = F.pad(x.float(), (0, pad)).view(x.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    # 127 / max as IEEE division (a Python number over a tensor goes through a
    # reciprocal in torch, a step off at times, and then a value near a tie rounds apart)
    inverse = torch.full_like(amax, 127.0) / amax
    qx = torch.round(blocks * torch.where(amax > 0, inverse, torch.zeros_like(amax)))
    w = F.pad(q.double(), (0, pad)).view(q.shape[0], -1, 32)
    dots = torch.einsum("rbi,obi->rob", qx.double(), w)  # integers, exactly
    return (dots * (amax / 127).double().squeeze(-1)[:, None, :]).sum(-1) \
        * scales.double()[None]


@pytest.mark.parametrize("rows, width, out", [(1, 576, 96), (3, 1536, 64), (4, 100, 70),
                                              (7, 64, 33), (1, 40, 5), (512, 1536, 64)])
def test_int8_activations_are_llama_cpps_q8_blocks_in_exact_integer_sums(rows, width, out):
    """Widths off the 64-byte step included (a zero-padded tail), more rows than one
    pass over a weight row takes (4), and a prompt's many rows: 786,432 activations,
    where a quantization off by one step near a rounding tie (as -ffast-math's
    reassociation gave) shows."""
    torch.manual_seed(rows)
    projection = matmul_layouts.Projection(torch.randn(out, width), None, "int8")
    if projection.skinny is None:
        pytest.skip("no compiler here")
    x = torch.randn(rows, width) * 3
    x[0, :32] = 0  # an all-zero block: scale 0, no division by it
    got = projection.kernels[matmul_layouts.INT8_ACTIVATIONS](x)
    expected = q8_reference(x, projection.int8, projection.scales)
    assert got.dtype == torch.float32
    # float32 sums of exact block sums: within float32 rounding of the largest output
    # (one activation a quantization step off would be ~1e-3 of it)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5,
                               atol=1e-6 * expected.abs().max().item())
    # bfloat16 activations: close, not the same (torch's own int8 kernel crashes on
    # some of these widths, so its arithmetic on a float copy)
    weight_only = projection._int8_dequantized(x)
    assert not torch.equal(got, weight_only)
    torch.testing.assert_close(got, weight_only, rtol=0.05, atol=0.05 * got.abs().max().item())


def test_int8_activations_run_only_where_the_setting_asks():
    model = tiny_llama()
    for asked in (False, True):
        choice = matmul_layouts.KernelChoice(int8_activations=asked)
        with torch.inference_mode():
            runner = ModelRunner(model, context_length=128, matmul_kernels=choice,
                                 quantize="int8")
            runner.prepare()
        projection = runner.fused.lm_head
        if matmul_layouts.INT8_ACTIVATIONS not in projection.kernels:
            pytest.skip("no compiler here")
        chosen = projection.kernels[matmul_layouts.INT8_ACTIVATIONS]
        assert (projection.one_row == chosen and projection.few_rows == chosen) == asked
        assert (projection.prompt_rows == chosen) == asked  # prompts too


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "int8-activations"])
@pytest.mark.parametrize("name", ["llama", "llama-mha-biases", "qwen2"])
def test_the_cpp_layer_loop_gives_the_python_loops_numbers(name, dtype):
    """csrc/decoder_layers.h runs a decode pass's layers in one call: it must give what
    the Python loop over the same kernels gives, bit for bit, at one row, a few rows
    and a draft being verified."""
    model = MODELS[name]()
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    pinned = matmul_layouts.KernelChoice(allowed=frozenset({"skinny"}),
                                         int8_activations=dtype == "int8-activations")
    with torch.inference_mode():
        runner = ModelRunner(model, context_length=128, matmul_kernels=pinned,
                             quantize="int8" if dtype.startswith("int8") else None)
        runner.prepare()
        if runner.attention_kernel is None or runner.fused.norm_kernel is None:
            pytest.skip("no compiler here")
        runner.fused.use_native_layers = False
        expected = decode_passes(runner)
        assert not any(runner.fused._native.values())
        runner.fused.use_native_layers = True
        got = decode_passes(runner)
    # short prompts (up to 16 rows) run it too
    assert set(runner.fused._native) == {"one_row", "few_rows", "many_rows"}
    assert all(runner.fused._native.values())  # the C++ loop ran every case
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
        assert a.abs().max() > 0.1


@pytest.mark.parametrize("rows, width", [(1, 576), (3, 100), (6, 64)])
def test_the_few_row_kernel_on_bfloat16_sums_exact_products(rows, width):
    """bfloat16 x bfloat16 products are exact in float32; whichever instructions the
    CPU offers (AVX-512 BF16 dot products, or widening), the kernel sums them in
    float32 and rounds once: float64 sums of the same products, rounded, within one
    bfloat16 step. Widths off the 32-value step included (masked tails)."""
    weight = torch.randn(72, width).bfloat16()
    projection = matmul_layouts.Projection(weight, None)
    if projection.skinny is None:
        pytest.skip("no compiler here")
    x = torch.randn(rows, width).bfloat16()
    got = projection._skinny(x)
    exact = (x.double() @ weight.double().T)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), exact, rtol=2 ** -7, atol=1e-6)


def test_the_kernels_can_be_built_for_another_cpu_family(monkeypatch):
    """ARBRIDGE_KERNEL_ARCH=x86-64-v3 builds the kernels for AVX2 only (what `make
    bench` times beside llama.cpp built for AVX2), as a build of its own."""
    from arbridge.engine import native_kernels
    from arbridge.tools import llama_cpp_peer

    monkeypatch.delenv("ARBRIDGE_KERNEL_ARCH", raising=False)
    assert native_kernels._arch_flag() == "-march=native"
    assert llama_cpp_peer.build_for_kernel_arch() == "native"
    monkeypatch.setenv("ARBRIDGE_KERNEL_ARCH", "x86-64-v3")
    assert native_kernels._arch_flag() == "-march=x86-64-v3"
    assert llama_cpp_peer.build_for_kernel_arch() == "avx2"
    assert "-DGGML_AVX512=OFF" in llama_cpp_peer.BUILDS["avx2"]
