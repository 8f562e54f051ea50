"""The model runner: executes one forward pass over a set of sequences.

It owns the model and the KV pool and knows nothing of requests: the scheduler
decides which sequences run and hands over their block tables; the runner builds
the position ids and the attention mask for rows of different lengths and calls
the model.
"""

from __future__ import annotations

import ctypes
import inspect
import logging

import torch

from arbridge.engine import paged_attention
from arbridge.engine.fused_decoder import FusedDecoder, sliding_window
from arbridge.engine.kv_pool import KVPool, PagedKVCache

log = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, model, context_length: int, fused: bool = True,
                 quantize: str | None = None, fused_only: bool = False,
                 attention_kernel: bool = True, matmul_kernels=None,
                 attention_kernel_bf16: bool = True):
        if quantize and not fused:
            raise ValueError(f"{quantize} weights run only in the fused decoder")
        self.model = model
        self._want_fused = fused
        # Serving: once the fused decoder runs, the float weights its kernels do not
        # read are let go (the model's own forward is never called again).
        self.fused_only = fused_only
        self._want_kernel = attention_kernel
        # bfloat16 decode attention in the kernel: faster, not SDPA's summation order
        self._kernel_dtypes = (torch.float32, torch.bfloat16) if attention_kernel_bf16 \
            else (torch.float32,)
        self.attention_kernel = None  # paged_attention's module, loaded by prepare()
        self.quantize = quantize
        self.matmul_kernels = matmul_kernels  # a KernelChoice; None: the default one
        # The lean path for Llama and GPT-2 shapes (None: model.forward); made
        # by prepare(), on the thread that computes.
        self.fused: FusedDecoder | None = None
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.context_length = context_length
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
            else model.config
        self.num_layers = config.num_hidden_layers
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        # transformers renamed `past_key_values` to `cache` (5.2x); accept both.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.window, self.mixed_windows = sliding_window(config)

    def prepare(self) -> None:
        if self._want_kernel and self.attention_kernel is None and self._want_fused \
                and self.device.type == "cpu" and self.dtype in self._kernel_dtypes:
            self.attention_kernel = paged_attention.load()
        if self._want_fused and self.fused is None:
            self.fused = FusedDecoder.build(self.model, self.quantize, self.matmul_kernels)
            if self.fused is None and self.quantize:
                raise ValueError(f"{self.quantize} weights: "
                                 f"{FusedDecoder.unsupported_reason(self.model)}")
            if self.fused is not None and self.fused_only:
                freed = self.fused.release_float_weights()
                _return_freed_heap()
                log.info("fused decoder: %d MB of float weights no kernel reads let go",
                         freed >> 20)

    def int8_activations(self) -> bool:
        """Whether every pass runs int8 activations (after prepare)."""
        if self.fused is None:
            return False
        from arbridge.engine.matmul_layouts import FEW, INT8_ACTIVATIONS, PROMPT_ROWS

        return all(p.kernel_for(rows) == p.kernels.get(INT8_ACTIVATIONS)
                   for p in self.fused.projections()
                   for rows in (1, FEW, PROMPT_ROWS, PROMPT_ROWS + 1))

    def attention_tokens(self) -> float:
        """The position at which a token's attention costs as much as its weight
        matmuls: 2 x params per token against about 4 x layers x hidden x position."""
        config = self.model.config.get_text_config() \
            if hasattr(self.model.config, "get_text_config") else self.model.config
        params = sum(p.numel() for p in self.model.parameters())
        embedding = self.model.get_input_embeddings().weight.numel()
        weights = max(params - embedding, 1)
        per_position = 2 * config.num_hidden_layers * config.hidden_size
        return max(256.0, weights / per_position)

    def kv_geometry(self) -> tuple[int, int]:
        """(kv_heads, head_dim) of the model's attention layers."""
        config = self.model.config.get_text_config() \
            if hasattr(self.model.config, "get_text_config") else self.model.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return kv_heads, head_dim

    def new_pool(self, budget_bytes: int, block_tokens: int = 16) -> KVPool:
        """A KV pool of as many blocks as `budget_bytes` holds."""
        kv_heads, head_dim = self.kv_geometry()
        per_block = KVPool.bytes_per_block(self.num_layers, kv_heads, head_dim, block_tokens,
                                           self.dtype)
        return KVPool(self.num_layers, kv_heads, head_dim, block_tokens,
                      max(2, budget_bytes // per_block), self.dtype, self.device)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The model's own input embeddings of ids [B, q] -> [B, q, hidden]."""
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, pool: KVPool, tables: list[list[int]], input_ids: torch.Tensor,
                starts: list[int], keep: int | torch.Tensor = 1,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Run the sequences whose block tables are `tables` on input_ids [B, q]
        placed at `starts` [B] (or on `inputs_embeds` [B, q, hidden]: soft prompts).
        Each table must cover its row's real tokens; padding writes go to block 0.

        Returns logits [B, k, vocab] for the kept query positions (`keep`: the
        last k positions, or a 1-D tensor of positions).
        """
        count, q_len = input_ids.shape
        read_length = min(max(starts) + q_len, self.context_length)  # host math: no sync
        # One new token per row, every row at the same length: each query sees
        # the whole cache read, so no mask is needed (always so at batch 1).
        unmasked = q_len == 1 and min(starts) + 1 == read_length
        cache = PagedKVCache(pool, self.attention_kernel if self.fused is not None else None)
        cache.prepare(tables, starts, q_len, read_length)
        starts = torch.tensor(starts, device=self.device)
        positions = (starts[:, None] + torch.arange(q_len, device=self.device)[None, :]).clamp_(
            max=self.context_length - 1)
        allowed = kv = None
        if not unmasked or self.fused is None:
            kv = torch.arange(cache.read_length, device=self.device)
            # Query t of row b sees cached positions 0..starts[b]+t and nothing
            # after: that hides later padding and stale data from earlier tenants.
            allowed = kv[None, None, :] <= positions[:, :, None]
        if self.fused is not None:
            return self.fused.forward(cache, None if inputs_embeds is not None else input_ids,
                                      inputs_embeds, positions, allowed, keep)
        mask = self._float_mask(allowed)
        if self.window:
            # transformers' SDPA path ignores `sliding_window` once it is handed a mask:
            # the window is in the mask or nowhere. A token sees itself and the
            # window - 1 before it.
            sliding = self._float_mask(allowed & (kv[None, None, :]
                                                  > positions[:, :, None] - self.window))
            mask = {"full_attention": mask, "sliding_attention": sliding} \
                if self.mixed_windows else sliding
        inputs = {"input_ids": input_ids} if inputs_embeds is None else \
            {"inputs_embeds": inputs_embeds}
        out = self.model(**inputs, position_ids=positions,
                         attention_mask=mask, use_cache=True, logits_to_keep=keep,
                         **{self._cache_kw: cache})
        return out.logits

    def _float_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return mask[:, None]


def _return_freed_heap() -> None:
    """Hand memory just freed back to the OS (glibc keeps freed heap for reuse: about
    90 MB here after the weights are let go); elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
