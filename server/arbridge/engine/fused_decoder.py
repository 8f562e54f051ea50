"""A lean forward pass for the two model families ArBridge serves most.

Megatron GPT checkpoints convert to GPT-2; SmolLM2 and Megatron-trained
Llama-style models are Llama (or its kin: Mistral, Qwen2, Qwen3 and their
mixture-of-experts versions). For those, this module runs the decoder layers
itself, straight on the slot KV cache, with the model's own weights:

- q/k/v and gate/up projections fused into one matmul each (Llama; GPT-2
  already stores them fused), so a decode step makes 4 matmuls per layer
  instead of 7;
- one rotary table and one boolean mask per pass, shared by every layer;
- none of transformers' per-layer generality (output hooks, attention
  dispatch, cache bookkeeping, mask conversion);
- each matmul in the weight layout measured fastest on this CPU, or on int8
  weights (`matmul_layouts.py`).

At batch 1 on a 2-core CPU a decode step is mostly weight reads, and
transformers' eager code adds about a quarter on top of them; this removes
most of that (figures in `make bench`, rows engine vs engine-hf).

The arithmetic is transformers' (the same upcasts and roundings; the C++
kernels for the norm, the matmuls at a few rows and decode attention sum in
another order), so outputs match it to float rounding; tests compare the two
on tiny models of both families. Anything else, or any config option this code
does not implement, runs through the model's own forward instead.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from arbridge.engine import matmul_layouts
from arbridge.engine.matmul_layouts import Projection

log = logging.getLogger(__name__)

# Rotary variants whose frequencies do not depend on the sequence length.
_STATIC_ROPE = {"default", "linear", "llama3"}


class FusedDecoder:
    """forward(cache, ids or embeds, positions, allowed, keep) -> logits."""

    family = ""

    @staticmethod
    def unsupported_reason(model) -> str:
        """Why the lean path cannot run `model` ('' when it can)."""
        kind = getattr(model.config, "model_type", "")
        builder = _BUILDERS.get(kind)
        if builder is None:
            return f"not for model type {kind!r}"
        return builder.unsupported(model)

    @staticmethod
    def build(model, quantize: str | None = None,
              kernels: matmul_layouts.KernelChoice | None = None) -> FusedDecoder | None:
        """The lean path for `model`, or None (with the reason logged) when it
        does not apply. `quantize="int8"`: int8 weight-only projections; `kernels`:
        the matmul kernels it may choose from and how many weight copies it may keep
        (None: all, timed, one copy)."""
        reason = FusedDecoder.unsupported_reason(model)
        if reason:
            log.info("fused decoder: %s; using the model's forward", reason)
            return None
        # Normal tensors, even when built inside the scheduler's inference
        # mode: the model's own forward may still train through these weights.
        with torch.inference_mode(False), torch.no_grad():
            decoder = _BUILDERS[model.config.model_type](model, quantize)
        with torch.no_grad():
            decoder.kernel_timings = matmul_layouts.tune(
                decoder.projections(), choice=kernels or matmul_layouts.KernelChoice())
        return decoder

    kernel_timings: dict  # what `matmul_layouts.tune` measured, set by build
    # (projection, the model modules whose float `weight` it was made from)
    sources: list[tuple[Projection, list[nn.Module]]]

    def release_float_weights(self) -> int:
        """Serve from this decoder alone: drop each weight copy its chosen kernels do
        not read, the model's own float weights included (the model's forward cannot
        run after this). A tied LM head stays: the input embedding is the same
        tensor. Returns the bytes of float weights let go."""
        getattr(self, "_native", {}).clear()  # built again from what stays
        embedding = self.model.get_input_embeddings().weight
        freed, kept_plain = 0, False
        for layer in self.layers:
            if getattr(layer, "experts", None) is not None:
                expert_bytes, kept = layer.experts.release_expert_weights()
                freed, kept_plain = freed + expert_bytes, kept_plain or kept
        for projection, modules in self.sources:
            if not projection.drop_unused():
                kept_plain = True
                continue
            for module in modules:
                if module.weight.data_ptr() == embedding.data_ptr():
                    continue
                freed += module.weight.numel() * module.weight.element_size()
                module.weight = None
        # What is left (embeddings, norms, biases) may still live in the checkpoint's
        # memory map, and one such tensor keeps every page of the file resident that
        # packing read (measured: 513 MB for SmolLM2). Copies let the map go, but only
        # when no projection still reads a module's weight: copying those would split
        # a tensor shared with the projection and hold it twice.
        if kept_plain or self.model.device.type != "cpu":
            return freed
        with torch.inference_mode(False), torch.no_grad():
            for tensor in [*self.model.parameters(), *self.model.buffers()]:
                tensor.data = tensor.data.clone()
        return freed

    def projections(self) -> list[Projection]:
        """Every matmul of one decode step, in the order a step runs them."""
        return [p for layer in self.layers for p in layer.projections()] + [self.lm_head]

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads through the projections (of an
        expert layer, the routed experts' share)."""
        total = sum(p.weight_bytes for p in self.projections())
        for layer in self.layers:
            experts = getattr(layer, "experts", None)
            if experts is not None:
                total -= sum(p.weight_bytes for p in experts.gate_up + experts.down) * (
                    1 - experts.read_fraction())
        return int(total)

    def forward(self, cache, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                positions: torch.Tensor, allowed: torch.Tensor,
                keep: int | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _kept(hidden: torch.Tensor, keep: int | torch.Tensor) -> torch.Tensor:
        """Only the query positions whose logits are wanted reach the LM head."""
        if isinstance(keep, int):
            return hidden[:, -keep:]
        return hidden[:, keep]


def _attend(query, keys, values, mask, heads: int, kv_heads: int) -> torch.Tensor:
    if heads != kv_heads and query.is_cuda:
        # On CUDA, enable_gqa with a mask falls back to the slow math kernel.
        keys = keys.repeat_interleave(heads // kv_heads, dim=1)
        values = values.repeat_interleave(heads // kv_heads, dim=1)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask,
                                          enable_gqa=heads != kv_heads)


def sliding_window(config) -> tuple[int | None, bool]:
    """(window, whether only some layers slide) as transformers reads the config: Mistral
    and Mixtral slide on every layer when `sliding_window` is set; configs with
    `layer_types` slide on their "sliding_attention" layers."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window or (types is not None and "sliding_attention" not in types):
        return None, False
    return int(window), types is not None and any(t != "sliding_attention" for t in types)


def _norm_kernel(dtype: torch.dtype):
    """csrc/rms_norm.h, compiled for this CPU, or None (torch's ops instead)."""
    if dtype not in (torch.float32, torch.bfloat16):
        return None
    from arbridge.engine import native_kernels

    return native_kernels.load("RMSNorm runs as torch ops")


def _swiglu(gate_up: Projection, down: Projection, x: torch.Tensor) -> torch.Tensor:
    """down(silu(gate) * up), gate and up from one fused matmul."""
    gate, up = gate_up(x).chunk(2, dim=-1)
    return down(F.silu(gate) * up)


class _Experts:
    """A sparse MoE block (Mixtral, Qwen2-MoE, Qwen3-MoE) run the lean way: the model's
    router arithmetic, then each routed expert's two matmuls as Projections (the
    kernels `tune` picked, on views of the model's own expert weights), reading only
    the experts some row was routed to. Same sums in the same order as transformers'
    expert loop (experts ascending, weighted, added into a zero tensor)."""

    def __init__(self, block: nn.Module, quantize: str | None):
        router, experts = block.gate, block.experts
        self.router = router.weight
        self.top_k = router.top_k
        # Mixtral always renormalises the top-k and keeps the weights in float32.
        self.normalise = getattr(router, "norm_topk_prob", True)
        self.cast = hasattr(router, "norm_topk_prob")
        self.gate_up = [Projection(experts.gate_up_proj[e], None, quantize)
                        for e in range(experts.num_experts)]
        self.down = [Projection(experts.down_proj[e], None, quantize)
                     for e in range(experts.num_experts)]
        self.block = block
        self.shared = self.shared_gate = None
        self.sources: list[tuple[Projection, list[nn.Module]]] = []
        if getattr(block, "shared_expert", None) is not None:  # Qwen2-MoE
            mlp = block.shared_expert
            self.shared = (Projection(*_fuse(mlp.gate_proj, mlp.up_proj), quantize),
                           Projection(mlp.down_proj.weight, mlp.down_proj.bias, quantize))
            self.shared_gate = block.shared_expert_gate.weight
            self.sources = [(self.shared[0], [mlp.gate_proj, mlp.up_proj]),
                            (self.shared[1], [mlp.down_proj])]

    def release_expert_weights(self) -> tuple[int, bool]:
        """Like `release_float_weights` for the experts' 3-D weights: (bytes let go,
        whether the model's own copy is still read)."""
        routed = self.gate_up + self.down
        if not all([p.drop_unused() for p in routed]):
            return 0, True
        experts = self.block.experts
        freed = sum(t.numel() * t.element_size() for t in (experts.gate_up_proj,
                                                           experts.down_proj))
        experts.gate_up_proj = experts.down_proj = None
        return freed, False

    def projections(self) -> list[Projection]:
        return self.gate_up + self.down + list(self.shared or ())

    def read_fraction(self) -> float:
        return self.top_k / len(self.gate_up)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = F.linear(flat, self.router)
        probs = F.softmax(logits, dtype=torch.float, dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.normalise:
            weights /= weights.sum(dim=-1, keepdim=True)
        if self.cast:
            weights = weights.to(logits.dtype)
        if len(flat) == 1:  # one stream's step: no gathers, the same sums (0 + a + b)
            row = chosen[0].tolist()
            out = None
            for expert in sorted(row):
                y = _swiglu(self.gate_up[expert], self.down[expert], flat)
                y = (y * weights[:, row.index(expert), None]).to(flat.dtype)
                out = y if out is None else out + y
        else:
            out = self._routed(flat, chosen, weights)
        if self.shared is not None:
            shared = _swiglu(*self.shared, flat)
            out = out + torch.sigmoid(F.linear(flat, self.shared_gate)) * shared
        return out.view(shape)

    def _routed(self, flat: torch.Tensor, chosen: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(flat)
        routed: dict[int, list[tuple[int, int]]] = {}
        for token, row in enumerate(chosen.tolist()):  # one small host copy a layer
            for slot, expert in enumerate(row):
                routed.setdefault(expert, []).append((token, slot))
        for expert in sorted(routed):
            tokens, slots = (torch.tensor(v, device=flat.device)
                             for v in zip(*routed[expert], strict=True))
            y = _swiglu(self.gate_up[expert], self.down[expert], flat[tokens])
            y = y * weights[tokens, slots, None]
            out.index_add_(0, tokens, y.to(out.dtype))
        return out


class _LlamaLayer(NamedTuple):
    attn_norm: torch.Tensor  # input_layernorm's weight
    qkv: Projection  # q, k and v fused
    q_norm: torch.Tensor | None  # Qwen3's RMSNorm over each query head (None: none)
    k_norm: torch.Tensor | None
    out: Projection  # o_proj
    mlp_norm: torch.Tensor  # post_attention_layernorm's weight
    gate_up: Projection | None  # gate and up fused (None: an expert layer)
    down: Projection | None
    experts: _Experts | None  # a sparse MoE block in place of gate_up and down

    def projections(self) -> list[Projection]:
        dense = [p for p in (self.qkv, self.out, self.gate_up, self.down) if p is not None]
        return dense + (self.experts.projections() if self.experts is not None else [])


class _LlamaDecoder(FusedDecoder):
    """Llama and the shapes that differ from it only in ways this forward implements:
    Mistral (without its window), Qwen2 (q/k/v biases), Qwen3 (q/k norms), and their
    mixture-of-experts versions (Mixtral, Qwen2-MoE, Qwen3-MoE), whose expert layers
    run `_Experts`: at one token a step only the k routed experts' weights are read,
    which is what makes a small-active MoE fast on a CPU."""

    family = "llama"

    @staticmethod
    def unsupported(model) -> str:
        c = model.config
        if getattr(c, "hidden_act", "silu") != "silu":
            return f"activation {c.hidden_act}"
        if getattr(c, "pretraining_tp", 1) != 1:
            return "pretraining_tp > 1"
        if sliding_window(c)[0]:
            return "sliding-window attention (the paged kernel reads whole contexts)"
        rope_type = getattr(model.model.rotary_emb, "rope_type", "default")
        if rope_type not in _STATIC_ROPE:
            return f"rotary type {rope_type} (frequencies change with length)"
        attn = model.model.layers[0].self_attn
        if abs(attn.scaling - attn.head_dim ** -0.5) > 1e-12:
            return "non-standard attention scaling"
        for layer in model.model.layers:
            mlp = layer.mlp
            experts = getattr(mlp, "experts", None)
            if not hasattr(mlp, "gate_proj") and not (
                    hasattr(mlp, "gate") and hasattr(experts, "gate_up_proj")
                    and hasattr(mlp.gate, "top_k")
                    and getattr(experts, "act_fn", None).__class__.__name__ == "SiLUActivation"):
                return f"MLP {type(mlp).__name__}"
        return ""

    def __init__(self, model, quantize: str | None = None):
        self.model = model
        body = model.model
        c = model.config
        attn = body.layers[0].self_attn
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = attn.head_dim
        self.eps = c.rms_norm_eps
        self.norm_kernel = _norm_kernel(model.dtype)
        self.inv_freq = body.rotary_emb.inv_freq
        self.rope_scale = float(body.rotary_emb.attention_scaling)
        self.layers, self.sources = [], []
        for layer in body.layers:
            a, mlp = layer.self_attn, layer.mlp
            qkv = Projection(*_fuse(a.q_proj, a.k_proj, a.v_proj), quantize)
            out = Projection(a.o_proj.weight, a.o_proj.bias, quantize)
            self.sources += [(qkv, [a.q_proj, a.k_proj, a.v_proj]), (out, [a.o_proj])]
            gate_up = down = experts = None
            if hasattr(mlp, "gate_proj"):
                gate_up = Projection(*_fuse(mlp.gate_proj, mlp.up_proj), quantize)
                down = Projection(mlp.down_proj.weight, mlp.down_proj.bias, quantize)
                self.sources += [(gate_up, [mlp.gate_proj, mlp.up_proj]),
                                 (down, [mlp.down_proj])]
            else:
                experts = _Experts(mlp, quantize)
                self.sources += experts.sources
            norms = [getattr(a, n, None) for n in ("q_norm", "k_norm")]
            q_norm, k_norm = (None if n is None else n.weight for n in norms)
            self.layers.append(_LlamaLayer(layer.input_layernorm.weight, qkv, q_norm, k_norm,
                                           out, layer.post_attention_layernorm.weight, gate_up,
                                           down, experts))
        self.lm_head = Projection(model.lm_head.weight, model.lm_head.bias, quantize)
        self.sources.append((self.lm_head, [model.lm_head]))
        # The C++ decoder-layer loop, per matmul case; made at first use, once `tune`
        # has chosen the kernels and the unused weight copies are gone.
        self.use_native_layers = True
        self._native: dict[str, object] = {}

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.norm_kernel is not None and x.device.type == "cpu":
            # One call instead of eight ops, 2 x layers + 1 times a step (csrc/rms_norm.h).
            return self.norm_kernel.rms_norm(x, weight, self.eps)
        if x.dtype == torch.float32:
            # One fused kernel instead of eight ops (the same float32 numbers):
            # at batch 1 the ops, not the arithmetic, cost the time.
            return F.rms_norm(x, weight.shape, weight, self.eps)
        # LlamaRMSNorm: statistics in float32, scaled in the model dtype.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def forward(self, cache, input_ids, inputs_embeds, positions, allowed, keep):
        body = self.model.model
        x = body.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, q_len, _ = x.shape
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        # Rotary tables for every (row, position), computed once per pass.
        freqs = positions[..., None].float() * self.inv_freq.float()
        cos = (freqs.cos() * self.rope_scale).to(x.dtype)[:, :, None, :]
        sin = (freqs.sin() * self.rope_scale).to(x.dtype)[:, :, None, :]
        # transformers' q*cos + rotate_half(q)*sin, with rotate_half(q) = [-q2, q1]
        # as roll(q) = [q2, q1] times [-sin, sin]: the same numbers, 4 ops, not 9.
        cos, sin = torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)
        half = dim // 2
        mask = None if allowed is None else allowed[:, None]  # None: attend to all
        native = self._native_layers(batch * q_len) if cache.can_attend_decode(x) else None
        if native is not None:
            # Every layer in one C++ call (csrc/decoder_layers.h): the same kernels and
            # numbers as the loop below, without its ~250 calls from Python a step.
            x = native.forward(x, cos, sin, cache.pool.data, cache.blocks, cache.offsets,
                               cache.tables, cache.lengths)
            return self.lm_head(self._norm(self._kept(x, keep), body.norm.weight))
        for index, layer in enumerate(self.layers):
            fused = layer.qkv(self._norm(x, layer.attn_norm)).view(batch, q_len,
                                                                   heads + 2 * kv_heads, dim)
            if layer.q_norm is None and cache.can_attend_decode(fused):
                # Rotary, KV write and attention in one kernel call (the same numbers).
                attended = cache.rotary_decode_attention(index, fused, cos, sin, heads,
                                                         dim ** -0.5)
                x = x + layer.out(attended)
                x = self._mlp(layer, x)
                continue
            # Rotate queries and keys together.
            turning = fused[:, :, :heads + kv_heads]
            if layer.q_norm is not None:  # Qwen3: each head normalised before rotary
                turning = torch.cat((self._norm(turning[:, :, :heads], layer.q_norm),
                                     self._norm(turning[:, :, heads:], layer.k_norm)), 2)
            rotated = turning * cos + turning.roll(half, -1) * sin
            query = rotated[:, :, :heads].transpose(1, 2)
            key = rotated[:, :, heads:].transpose(1, 2)
            value = fused[:, :, heads + kv_heads:].transpose(1, 2)
            if cache.can_attend_decode(query):
                attended = cache.decode_attention(index, query, key, value, dim ** -0.5)
            else:
                keys, values = cache.layers[index].update(key, value, index)
                attended = _attend(query, keys, values, mask, heads, kv_heads)
            x = x + layer.out(attended.transpose(1, 2).reshape(batch, q_len, heads * dim))
            x = self._mlp(layer, x)
        return self.lm_head(self._norm(self._kept(x, keep), body.norm.weight))

    def _native_layers(self, tokens: int):
        """csrc/decoder_layers.h loaded with this model's layers, for a decode pass of
        `tokens` rows, when it computes what the Python loop would: dense layers without
        q/k norms, the norm kernel, and one of ArBridge's few-row kernels chosen for
        every projection at this many rows. Otherwise None."""
        if not self.use_native_layers or self.norm_kernel is None:
            return None
        # One loaded copy per kernel case (the cases of Projection.kernel_for; past
        # SKINNY_ROWS only the int8-activations kernel runs here).
        case = "one_row" if tokens == 1 else "few_rows" if tokens <= matmul_layouts.FEW \
            else "many_rows" if tokens <= matmul_layouts.SKINNY_ROWS \
            else "wide" if tokens <= matmul_layouts.PROMPT_ROWS else "prompt"
        if case not in self._native:
            dense = all(layer.q_norm is None and layer.experts is None
                        for layer in self.layers)
            self._native[case] = self._load_native_layers(tokens) if dense else None
        return self._native[case]

    def _load_native_layers(self, tokens: int):
        module = self.norm_kernel  # the one module of ArBridge's CPU kernels
        native = module.DecoderLayers(self.heads, self.kv_heads, self.head_dim, self.eps)
        for layer in self.layers:
            operands = [p.native_operands(tokens) for p in layer.projections()]
            if None in operands:  # a BLAS kernel won this case somewhere
                return None
            native.add_layer(layer.attn_norm, layer.mlp_norm,
                             [tensor for tensors, _ in operands for tensor in tensors],
                             [int8_activations for _, int8_activations in operands])
        return native

    def _mlp(self, layer: _LlamaLayer, x: torch.Tensor) -> torch.Tensor:
        if layer.experts is not None:
            return x + layer.experts(self._norm(x, layer.mlp_norm))
        return x + _swiglu(layer.gate_up, layer.down, self._norm(x, layer.mlp_norm))


class _GPT2Layer(NamedTuple):
    attn_norm: nn.LayerNorm
    qkv: Projection  # c_attn
    out: Projection  # attn.c_proj
    mlp_norm: nn.LayerNorm
    up: Projection  # c_fc
    act: nn.Module
    down: Projection  # mlp.c_proj

    def projections(self) -> list[Projection]:
        return [self.qkv, self.out, self.up, self.down]


class _GPT2Decoder(FusedDecoder):
    family = "gpt2"

    @staticmethod
    def unsupported(model) -> str:
        c = model.config
        if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx:
            return "non-standard attention scaling"
        if c.reorder_and_upcast_attn:
            return "reorder_and_upcast_attn"
        if getattr(c, "add_cross_attention", False):
            return "cross-attention"
        return ""

    def __init__(self, model, quantize: str | None = None):
        self.model = model
        body = model.transformer
        self.heads = model.config.n_head
        self.head_dim = model.config.n_embd // self.heads
        self.layers, self.sources = [], []
        for b in body.h:
            convs = (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)
            c_attn, c_proj, c_fc, mlp_proj = (_conv1d(conv, quantize) for conv in convs)
            self.layers.append(_GPT2Layer(b.ln_1, c_attn, c_proj, b.ln_2, c_fc, b.mlp.act,
                                          mlp_proj))
            self.sources += [(p, [conv]) for p, conv in zip((c_attn, c_proj, c_fc, mlp_proj),
                                                            convs, strict=True)]
        self.lm_head = Projection(model.lm_head.weight, model.lm_head.bias, quantize)
        self.sources.append((self.lm_head, [model.lm_head]))

    def forward(self, cache, input_ids, inputs_embeds, positions, allowed, keep):
        body = self.model.transformer
        x = body.wte(input_ids) if inputs_embeds is None else inputs_embeds
        x = x + body.wpe(positions)
        batch, q_len, hidden = x.shape
        heads, dim = self.heads, self.head_dim
        mask = None if allowed is None else allowed[:, None]  # None: attend to all
        for index, layer in enumerate(self.layers):
            fused = layer.qkv(layer.attn_norm(x)).view(batch, q_len, 3, heads, dim)
            query, key, value = (fused[:, :, i].transpose(1, 2) for i in range(3))
            if cache.can_attend_decode(query):
                attended = cache.decode_attention(index, query, key, value, dim ** -0.5)
            else:
                keys, values = cache.layers[index].update(key, value, index)
                attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
            x = x + layer.out(attended.transpose(1, 2).reshape(batch, q_len, hidden))
            x = x + layer.down(layer.act(layer.up(layer.mlp_norm(x))))
        return self.lm_head(body.ln_f(self._kept(x, keep)))


def _conv1d(conv, quantize: str | None) -> Projection:
    # transformers' Conv1D stores its weight as [in, out]: a transposed view.
    return Projection(conv.weight.t(), conv.bias, quantize)


def _fuse(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate projections into one (weight, bias) and make the modules'
    parameters views into it, so the model's own forward still works and the
    weights are not held twice."""
    fused = []
    for name in ("weight", "bias"):
        parts = [getattr(lin, name) for lin in linears]
        if parts[0] is None:
            fused.append(None)
            continue
        whole = torch.cat([p.detach() for p in parts]).contiguous()
        offset = 0
        for lin, part in zip(linears, parts, strict=True):
            rows = part.shape[0]
            setattr(lin, name, nn.Parameter(whole[offset:offset + rows], requires_grad=False))
            offset += rows
        fused.append(whole)
    return fused[0], fused[1]


_BUILDERS = {kind: _LlamaDecoder for kind in ("llama", "mistral", "qwen2", "qwen3", "mixtral",
                                              "qwen2_moe", "qwen3_moe")} | {"gpt2": _GPT2Decoder}
