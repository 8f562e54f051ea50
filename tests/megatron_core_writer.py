"""Real Megatron-Core checkpoints for the tests, written by NVIDIA's own code.

    python tests/megatron_core_writer.py SPEC.json OUT
    python tests/megatron_core_writer.py --jobs JOBS.json   # [[SPEC.json, OUT], ...]

builds a `megatron.core` GPTModel on `tp x pp` gloo processes (CPU), gives every
weight seeded random values (so a wrong norm, bias or split shows in the logits),
and saves it the way Megatron-LM's `save_checkpoint` does:

- `OUT/torch_dist/`: `latest_checkpointed_iteration.txt` + `iter_XXXXXXX/` (or
  `release/`) written by `megatron.core.dist_checkpointing.save`, with `args`,
  optimizer moments, scheduler and RNG state beside the model, as training leaves;
- `OUT/torch/`: the legacy format, `mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt` holding
  `model.state_dict_for_save_checkpoint()` and the same companions;
- `OUT/fsdp_dtensor/`: Megatron-FSDP's format, built to its layout from the TP=1 model
  the oracle loads (megatron-core cannot run Megatron-FSDP on a CPU:
  `_save_fsdp_dtensor` says how).

The oracle is Megatron's own forward: the same processes, regrouped as TP=1, PP=1,
load `OUT/torch_dist` into a TP=1, PP=1 GPTModel with `dist_checkpointing.load` (the
format reshards) and write its logits for fixed token ids to `OUT/reference.pt`.
bf16 checkpoints are compared the way a float32 server runs them: Megatron's forward on the bf16
weights upcast to float32.

Spec keys beyond the shape (tests/test_megatron_core.py has examples): `formats`,
`reference`, `optimizer` and `randomize` (all on by default) let
tools/megatron_core_memory_probe.py write a large checkpoint quickly.

Only a test helper: the product never imports megatron.core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sys
import warnings
import zlib
from pathlib import Path

warnings.filterwarnings("ignore")

FORMATS = ("torch_dist", "torch", "fsdp_dtensor")
REFERENCE_ROWS, REFERENCE_LENGTH = 2, 12  # `ref_len` in the spec overrides the length


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_patches():
    """megatron-core asks CUDA for things a CPU run does not have (see the design notes)."""
    import torch

    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    # MoE without Transformer Engine: the router's torch.mm fallback.
    from megatron.core.transformer.moe import moe_utils
    moe_utils.te_general_gemm = None
    # The sliding-window mask is allocated on "cuda": the same mask on the CPU.
    from megatron.core.fusions import fused_softmax

    def window_mask(sq, skv, window_size):
        m = torch.ones(sq, skv, dtype=torch.bool)
        return ~torch.tril(torch.triu(m, diagonal=skv - sq - window_size[0]),
                           diagonal=skv - sq + window_size[1])

    fused_softmax.get_sliding_window_causal_mask = window_mask


def _world(spec: dict, tp: int, pp: int) -> int:
    """Expert parallelism needs data-parallel ranks to spread experts over."""
    return tp * pp * ((spec.get("moe") or {}).get("ep", 1))


def _bias(spec: dict) -> bool:
    return spec.get("bias", spec["arch"] != "llama")


def _qkv_bias(spec: dict) -> bool:
    return spec.get("qkv_bias", _bias(spec))


def megatron_args(spec: dict, tp: int, pp: int):
    """The `args` namespace Megatron-LM pickles: the fields a loader reads, their real
    names and types (signal.Signals, torch.dtype and Megatron enums included)."""
    import torch
    from megatron.core.transformer.enums import AttnBackend

    llama = spec["arch"] == "llama"
    moe = spec.get("moe") or {}
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    heads = spec["heads"]
    groups = spec.get("groups", heads)
    return argparse.Namespace(
        num_layers=spec["layers"], hidden_size=spec["hidden"],
        ffn_hidden_size=spec["ffn"], num_attention_heads=heads,
        group_query_attention=groups != heads, num_query_groups=groups,
        kv_channels=spec.get("kv_channels") or spec["hidden"] // heads,
        max_position_embeddings=spec["positions"],
        seq_length=spec["positions"], encoder_seq_length=spec["positions"],
        position_embedding_type="rope" if llama else "learned_absolute",
        add_position_embedding=True,  # True even for RoPE models, as in Megatron-LM
        use_rotary_position_embeddings=llama, rotary_base=spec.get("rotary_base", 10000),
        rotary_percent=1.0, rotary_interleaved=False, rotary_seq_len_interpolation_factor=None,
        use_rope_scaling=bool(spec.get("rope_scaling")),
        rope_scaling_factor=spec.get("rope_scaling") or 8.0,
        normalization="RMSNorm" if llama else "LayerNorm", layernorm_epsilon=spec["eps"],
        apply_layernorm_1p=False, swiglu=llama, squared_relu=False,
        bias_gelu_fusion=spec.get("bias_gelu_fusion", False), bias_swiglu_fusion=llama,
        add_bias_linear=_bias(spec), add_qkv_bias=_qkv_bias(spec),
        untie_embeddings_and_output_weights=spec.get("untied", False),
        padded_vocab_size=spec["padded_vocab"], make_vocab_size_divisible_by=128,
        qk_layernorm=bool(spec.get("qk_layernorm")), multi_latent_attention=False,
        mtp_num_layers=None, apply_residual_connection_post_layernorm=False,
        openai_gelu=False, onnx_safe=None, heterogeneous_layers_config_path=None,
        window_size=(spec["window"], 0) if spec.get("window") else None,
        window_attn_skip_freq=None,
        num_experts=moe.get("experts"), moe_router_topk=moe.get("topk", 2),
        moe_ffn_hidden_size=moe.get("ffn"), moe_router_pre_softmax=moe.get("pre_softmax", False),
        moe_shared_expert_intermediate_size=moe.get("shared_ffn"),
        moe_shared_expert_gate=moe.get("shared_gate", False), moe_layer_freq=1,
        moe_router_score_function="softmax", moe_router_topk_scaling_factor=None,
        moe_router_enable_expert_bias=False, moe_router_num_groups=None,
        moe_router_load_balancing_type="aux_loss", moe_grouped_gemm=False,
        moe_token_dispatcher_type="allgather", moe_aux_loss_coeff=1e-2,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=spec.get("vp"), context_parallel_size=1,
        expert_model_parallel_size=moe.get("ep", 1), sequence_parallel=False,
        params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=False,
        tokenizer_type=spec["tokenizer_type"], vocab_file=spec.get("vocab_file"),
        merge_file=spec.get("merge_file"), tokenizer_model=spec.get("tokenizer_model"),
        attention_backend=AttnBackend.auto, exit_signal=signal.SIGTERM,
        ckpt_format=spec.get("format", "torch_dist"), use_dist_ckpt=True,
        iteration=spec["iteration"],
        save=None, load=None, seed=spec["seed"], micro_batch_size=1, global_batch_size=8,
        lr=3e-4, min_lr=3e-5, train_iters=spec["iteration"] or 100,
        world_size=_world(spec, tp, pp), data_parallel_size=_world(spec, tp, pp) // (tp * pp),
        rank=0,
    )


def _build(spec: dict, tp: int, pp: int, *, pre: bool, post: bool, vp_stage: int | None = None):
    import torch
    import torch.nn.functional as F
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.module import Float16Module
    from megatron.core.transformer.transformer_config import TransformerConfig

    llama = spec["arch"] == "llama"
    bf16 = spec["dtype"] == "bf16"
    moe = spec.get("moe") or {}
    moe_config = {} if not moe else dict(
        num_moe_experts=moe["experts"], moe_router_topk=moe.get("topk", 2),
        moe_ffn_hidden_size=moe.get("ffn", spec["ffn"]),
        moe_router_pre_softmax=moe.get("pre_softmax", False),
        moe_shared_expert_intermediate_size=moe.get("shared_ffn"),
        moe_shared_expert_gate=moe.get("shared_gate", False),
        moe_grouped_gemm=False, moe_token_dispatcher_type="allgather",
        moe_aux_loss_coeff=0.0, expert_model_parallel_size=moe.get("ep", 1))
    config = TransformerConfig(
        num_layers=spec["layers"], hidden_size=spec["hidden"], ffn_hidden_size=spec["ffn"],
        num_attention_heads=spec["heads"], num_query_groups=spec.get("groups", spec["heads"]),
        kv_channels=spec.get("kv_channels"),
        normalization="RMSNorm" if llama else "LayerNorm", layernorm_epsilon=spec["eps"],
        gated_linear_unit=llama, activation_func=F.silu if llama else F.gelu,
        bias_activation_fusion=llama or spec.get("bias_gelu_fusion", False),
        add_bias_linear=_bias(spec), add_qkv_bias=_qkv_bias(spec),
        hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32, bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_cpu_initialization=True, persist_layer_norm=False,
        gradient_accumulation_fusion=False, masked_softmax_fusion=False,
        bias_dropout_fusion=False, apply_rope_fusion=False,
        virtual_pipeline_model_parallel_size=spec.get("vp") if vp_stage is not None else None,
        qk_layernorm=bool(spec.get("qk_layernorm")),
        window_size=(spec["window"], 0) if spec.get("window") else None,
        **moe_config,
    )
    real_cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # tied embeddings with PP > 1
    try:
        model = GPTModel(
            config, get_gpt_layer_local_spec(
                num_experts=moe.get("experts"), moe_grouped_gemm=False,
                qk_layernorm=bool(spec.get("qk_layernorm")), normalization=config.normalization),
            vocab_size=spec["padded_vocab"], max_sequence_length=spec["positions"],
            pre_process=pre, post_process=post, parallel_output=False,
            share_embeddings_and_output_weights=not spec.get("untied", False),
            position_embedding_type="rope" if llama else "learned_absolute",
            rotary_base=spec.get("rotary_base", 10000), vp_stage=vp_stage,
            rope_scaling=bool(spec.get("rope_scaling")),
            rope_scaling_factor=spec.get("rope_scaling") or 8.0)
    finally:
        torch.Tensor.cuda = real_cuda
    if bf16:
        model = Float16Module(config, model)
    return model


def _randomize(model, stage: int, tp_rank: int, seed: int, first_expert: int = 0) -> None:
    """Seeded values for every parameter; a tensor-parallel shard gets its rank's values,
    a replicated one the same values on every rank, the tied output layer the embedding's,
    a local expert those of its global number (`first_expert` + local index)."""
    import re

    import torch

    for name, p in model.named_parameters():
        name = name.removeprefix("module.")
        name = re.sub(r"local_experts\.(\d+)\.",
                      lambda m: f"global_expert.{first_expert + int(m.group(1))}.", name)
        shared = name in ("embedding.word_embeddings.weight", "output_layer.weight")
        key = "shared-embedding" if shared else f"{stage}:{name}"
        rank = tp_rank if getattr(p, "tensor_model_parallel", False) else 0
        g = torch.Generator().manual_seed(seed * 7919 + zlib.crc32(f"{key}|{rank}".encode()))
        with torch.no_grad():
            if name.endswith("layer_norm_weight") or "layernorm.weight" in name:
                value = 1 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                value = 0.1 * torch.randn(p.shape, generator=g)
            elif p.dim() == 2 and "embeddings" not in name and not shared:
                value = torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5
            else:
                value = torch.randn(p.shape, generator=g)
            p.copy_(value.to(p.dtype))


def _optimizer_moments(model_sd: dict) -> dict:
    """Adam moments as Megatron's optimizer saves them in torch_dist: one ShardedTensor
    per parameter under `optimizer.state.exp_avg.<key>` (a loader must skip them)."""
    import dataclasses

    import torch
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.dist_checkpointing.dict_utils import nested_values

    state: dict = {"exp_avg": [], "exp_avg_sq": []}
    for sh in nested_values(model_sd):
        if not isinstance(sh, ShardedTensor):
            continue
        for moment in state:
            state[moment].append(dataclasses.replace(
                sh, key=f"optimizer.state.{moment}.{sh.key}", dtype=torch.float32,
                data=torch.full_like(sh.data, 0.5, dtype=torch.float32)))
    return {"state": state, "param_groups": [{"lr": 3e-4, "weight_decay": 0.1}]}


def _rank_main(rank: int, jobs: list, port: int) -> None:
    """One rank's process: every job (spec, out) in turn, on one gloo group (starting
    interpreters that import megatron.core costs more than writing a tiny model)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    _cpu_patches()
    spec = jobs[0][0]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=_world(spec, spec["tp"], spec["pp"]))
    for spec, out in jobs:
        _write_one(rank, spec, out)
        parallel_state.destroy_model_parallel()
        dist.barrier()
    dist.destroy_process_group()


def _write_one(rank: int, spec: dict, out: str) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist
    from megatron.core import dist_checkpointing, parallel_state, tensor_parallel

    tp, pp = spec["tp"], spec["pp"]
    moe = spec.get("moe") or {}
    vp = spec.get("vp")
    parallel_state.initialize_model_parallel(tp, pp, virtual_pipeline_model_parallel_size=vp,
                                             expert_model_parallel_size=moe.get("ep", 1))
    torch.manual_seed(spec["seed"])
    tensor_parallel.random.model_parallel_cuda_manual_seed(
        spec["seed"], inference_rng_tracker=True, force_reset_rng=True)
    stage = parallel_state.get_pipeline_model_parallel_rank()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    ep, ep_rank = moe.get("ep", 1), parallel_state.get_expert_model_parallel_rank()
    dp_rank = parallel_state.get_data_parallel_rank()
    # One model chunk per virtual stage, as Megatron-LM's get_model builds them.
    chunks = []
    for c in range(vp or 1):
        chunk = _build(spec, tp, pp, pre=stage == 0 and c == 0,
                       post=stage == pp - 1 and c == (vp or 1) - 1,
                       vp_stage=c if vp else None)
        if spec.get("randomize", True):
            _randomize(chunk, stage * 100 + c, tp_rank, spec["seed"],
                       ep_rank * (moe.get("experts", 0) // ep))
        chunks.append(chunk)
    keys = [f"model{c}" for c in range(len(chunks))] if vp else ["model"]
    args = megatron_args(spec, tp, pp)
    release = spec["iteration"] is None
    folder = "release" if release else f"iter_{spec['iteration']:07d}"
    rng_state = {"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
                 "torch_rng_state": torch.get_rng_state(),
                 "cuda_rng_state": torch.get_rng_state(),
                 "rng_tracker_states": tensor_parallel.get_cuda_rng_tracker().get_states()}
    companions = {"checkpoint_version": 3.0, "opt_param_scheduler": {
        "max_lr": 3e-4, "num_steps": 800, "decay_style": "cosine"},
        "num_floating_point_operations_so_far": 1.5e12}
    if not release:
        companions["iteration"] = spec["iteration"]

    # torch_dist, the default --ckpt-format.
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    root = Path(out) / "torch_dist"
    model_sds = {key: chunk.sharded_state_dict()
                 for key, chunk in zip(keys, chunks, strict=True)}
    state = {"args": args, **model_sds, **companions,
             "optimizer": _optimizer_moments(model_sds) if spec.get("optimizer", True) else None,
             "rng_state": ShardedObject("rng_state", [rng_state], (pp, tp), (stage, tp_rank),
                                        replica_id=dp_rank)}
    if rank == 0:
        (root / folder).mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(state, str(root / folder))
    dist.barrier()

    # The legacy torch format: one pickle per (tensor rank, pipeline stage).
    legacy = Path(out) / "torch"
    if "torch" not in spec.get("formats", FORMATS):
        if rank == 0:
            (root / "latest_checkpointed_iteration.txt").write_text(
                "release" if release else str(spec["iteration"]))
        dist.barrier()
        return
    # Megatron-LM's get_checkpoint_name: one file per (tensor, pipeline, expert) rank,
    # written by expert-data-parallel rank 0.
    name = (f"mp_rank_{tp_rank:02d}" + (f"_{stage:03d}" if pp > 1 else "")
            + (f"_{ep_rank:03d}" if ep > 1 else ""))
    if parallel_state.get_expert_data_parallel_rank() == 0:
        adam = torch.optim.Adam([p for chunk in chunks for p in chunk.parameters()], lr=3e-4)
        torch.save({"args": megatron_args({**spec, "format": "torch"}, tp, pp),
                    **{key: chunk.state_dict_for_save_checkpoint()
                       for key, chunk in zip(keys, chunks, strict=True)}, **companions,
                    "optimizer": {"optimizer": adam.state_dict(), "grad_scaler": None},
                    "rng_state": [rng_state]},
                   _mkdir(legacy / folder / name) / "model_optim_rng.pt")
    dist.barrier()
    if rank == 0:
        for r in (root, legacy):
            (r / "latest_checkpointed_iteration.txt").write_text(
                "release" if release else str(spec["iteration"]))
    dist.barrier()
    if spec.get("reference", True):
        # The same processes, regrouped as TP=1, PP=1 data-parallel replicas (no new
        # interpreters to start); every rank loads, rank 0 writes the logits.
        parallel_state.destroy_model_parallel()
        _reference(spec, out, write=rank == 0)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _save_fsdp_dtensor(spec: dict, model, root: Path) -> None:
    """`--ckpt-format fsdp_dtensor` as Megatron-LM 0.16.1 saves it (checkpointing.py,
    transformer/fsdp_dtensor_checkpoint.py). megatron-core cannot run Megatron-FSDP on a
    CPU (its DeviceMesh and buffers are CUDA), so this is built to that code's layout
    from megatron-core's own module state dict, not written by Megatron-FSDP itself:
    a plain torch.distributed.checkpoint folder (no metadata.json, no common.pt) whose
    keys are the module's under `model.module.`, one per layer, tensors whole; SwiGLU
    `linear_fc1.weight` stored as its halves `weight_w` (gate) and `weight_v` (up); no
    `_extra_state`; `args`, `iteration` and `checkpoint_version` as pickled entries
    beside them, with Adam moments and RNG state."""
    import torch
    import torch.distributed.checkpoint as dcp

    model_sd = {}
    for key, value in model.state_dict().items():
        if "_extra_state" in key or not torch.is_tensor(value):
            continue
        if ".linear_fc1." in key and spec["arch"] == "llama":  # gated: [gate; up]
            base, _, kind = key.rpartition(".")
            w, v = value.chunk(2, dim=0)
            model_sd[f"{base}.{kind}_w"], model_sd[f"{base}.{kind}_v"] = (
                w.contiguous(), v.contiguous())
        else:
            model_sd[key] = value.contiguous()
    release = spec["iteration"] is None
    folder = root / ("release" if release else f"iter_{spec['iteration']:07d}")
    state = {"model": {"module": model_sd},
             "optimizer": {"state": {"module": {"module": {"module": {
                 key: {"exp_avg": torch.zeros_like(v, dtype=torch.float32)}
                 for key, v in list(model_sd.items())[:3]}}}}},
             "args": megatron_args({**spec, "format": "fsdp_dtensor", "tp": 1, "pp": 1,
                                    "vp": None, "moe": {**(spec.get("moe") or {}), "ep": 1}},
                                   1, 1),
             "checkpoint_version": 3.0,
             "rng_state": {"(0, 0)": {0: {"torch_rng_state": torch.get_rng_state()}}}}
    if not release:
        state["iteration"] = spec["iteration"]
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True)
    (root / "latest_checkpointed_iteration.txt").write_text(
        "release" if release else str(spec["iteration"]))


def _reference(spec: dict, out: str, write: bool) -> None:
    """Megatron's forward of the saved weights (TP=1, PP=1, float32 arithmetic)."""
    import torch
    from megatron.core import dist_checkpointing, parallel_state, tensor_parallel

    parallel_state.initialize_model_parallel(1, 1)
    torch.manual_seed(0)
    tensor_parallel.random.model_parallel_cuda_manual_seed(
        0, inference_rng_tracker=True, force_reset_rng=True)
    model = _build(spec, 1, 1, pre=True, post=True)
    root = Path(out) / "torch_dist"
    value = (root / "latest_checkpointed_iteration.txt").read_text().strip()
    folder = root / ("release" if value == "release" else f"iter_{int(value):07d}")
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(folder))
    model.load_state_dict(loaded["model"])
    stored = model.module if hasattr(model, "module") else model
    if write and "fsdp_dtensor" in spec.get("formats", FORMATS):
        _save_fsdp_dtensor(spec, stored, Path(out) / "fsdp_dtensor")
    # float32 arithmetic on the stored (possibly bf16) weights, upcast exactly
    inner = _build({**spec, "dtype": "fp32"}, 1, 1, pre=True, post=True)
    inner.load_state_dict({k: v.float() if torch.is_tensor(v) else v
                           for k, v in stored.state_dict().items()})
    inner.eval()
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, spec["vocab"], (REFERENCE_ROWS, spec.get("ref_len", REFERENCE_LENGTH)),
                        generator=g)
    positions = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    mask = torch.triu(torch.ones(1, 1, ids.shape[1], ids.shape[1], dtype=torch.bool), 1)
    with torch.no_grad():
        logits = inner(ids, positions, mask)
    if write:
        torch.save({"input_ids": ids, "logits": logits.float()[..., :spec["vocab"]]},
                   Path(out) / "reference.pt")


def main() -> int:
    """`SPEC.json OUT`, or `--jobs JOBS.json` (a list of [SPEC.json, OUT] pairs whose
    specs need the same number of ranks), written by one set of processes."""
    import torch.multiprocessing as mp

    pairs = (json.loads(Path(sys.argv[2]).read_text()) if sys.argv[1] == "--jobs"
             else [sys.argv[1:3]])
    jobs = [(json.loads(Path(spec).read_text()), out) for spec, out in pairs]
    worlds = {_world(spec, spec["tp"], spec["pp"]) for spec, _ in jobs}
    if len(worlds) != 1:
        raise SystemExit(f"one writer run takes specs of one world size, not {sorted(worlds)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    world = worlds.pop()
    for attempt in range(3):
        try:
            mp.spawn(_rank_main, args=(jobs, _free_port()), nprocs=world)
            break
        except mp.ProcessRaisedException as exc:
            # The port was free when picked, then taken (any outgoing connection may get
            # it) before gloo listened: pick another.
            if "EADDRINUSE" not in str(exc) or attempt == 2:
                raise
    for spec, out in jobs:
        (Path(out) / "spec.json").write_text(json.dumps(spec, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
