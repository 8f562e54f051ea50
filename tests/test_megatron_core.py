"""Megatron-Core checkpoints written by megatron-core itself load logits-exact.

Every checkpoint here is written by NVIDIA's code (`megatron_core_writer.py`:
megatron-core 0.16.1 on gloo processes, TP x PP ranks), in both formats
Megatron-LM saves, and the oracle is Megatron's own forward of the saved weights.
They are generated once per test run (about a minute on two cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import megatron.core  # noqa: F401 - see below
import pytest
import torch
from transformers import AutoModelForCausalLM

from arbridge.models.megatron import MegatronFormatError, convert
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import REPO, TESTS, collect, start_server
from tiny_model import train_tokenizer

# Importing megatron.core registers its own safe globals with torch for the whole process
# (the tests unpickle its enums freely); the converter must not lean on them, so they are
# dropped here, once it is imported, and before every test (`_only_our_allow_list`).
torch.serialization.clear_safe_globals()

WRITER = TESTS / "megatron_core_writer.py"
_BASE = dict(layers=4, hidden=64, ffn=96, heads=4, positions=128, eps=1e-5, padded_vocab=384,
             iteration=100)

# name -> (spec, tokenizer kind). Between them: TP 1/2, PP 1/2, EP 2, virtual pipeline, fp32
# and bf16, GQA and MHA, tied and untied output, biases or none, Llama (3.1 rope scaling
# too) / Qwen2 / Qwen3 / Mistral / GPT-2 shapes, Mixtral / Qwen2-MoE / Qwen3-MoE experts
# (routers with and without pre-softmax, a gated shared expert), sliding windows, tanh and
# erf GeLU, iter_* and release, and every tokenizer source.
CHECKPOINTS = {
    "llama-gqa-tp1-pp1": (dict(arch="llama", tp=1, pp=1, dtype="fp32", groups=2, untied=True,
                               seed=1), "hf-beside"),
    "llama-gqa-tp2-pp2-untied": (dict(arch="llama", tp=2, pp=2, dtype="fp32", groups=2,
                                      untied=True, seed=2, rotary_base=500000), "hf-args"),
    "llama-tp2-bf16-release": (dict(arch="llama", tp=2, pp=1, dtype="bf16", groups=4, seed=3,
                                    iteration=None), "sentencepiece"),
    "llama-bias-tp1-pp2-vp2-tied": (dict(arch="llama", tp=1, pp=2, vp=2, dtype="fp32",
                                         groups=4, bias=True, eps=1e-6, seed=4), "hf-beside"),
    "qwen2-qkv-bias-tp2": (dict(arch="llama", tp=2, pp=1, dtype="fp32", groups=2, bias=False,
                                qkv_bias=True, untied=True, seed=5), "hf-beside"),
    "gpt2-tanh-gelu-tp2": (dict(arch="gpt2", tp=2, pp=1, dtype="fp32", bias_gelu_fusion=True,
                                seed=6), "gpt2-bpe"),
    "gpt2-erf-gelu-tp2-pp2-bf16": (dict(arch="gpt2", tp=2, pp=2, dtype="bf16",
                                        bias_gelu_fusion=False, seed=7), "gpt2-bpe"),
    # Today's models (issue #31). Llama 3.1's rope scaling moves logits by < 1e-2 over a
    # dozen tokens, so its oracle reads 1,024; the context is past the 8,192 it scales from.
    "llama3-rope-scaling-pp2": (dict(arch="llama", tp=1, pp=2, dtype="fp32", groups=2,
                                     untied=True, seed=8, rope_scaling=8.0, layers=2,
                                     rotary_base=500000, positions=16384, ref_len=1024,
                                     hf="LlamaForCausalLM"), "hf-beside"),
    # Qwen3's heads are wider than hidden / heads (kv_channels 128 at hidden 1024, 16 heads)
    "qwen3-qk-norm-tp2-bf16-release": (dict(arch="llama", tp=2, pp=1, dtype="bf16", groups=2,
                                            qk_layernorm=True, eps=1e-6, seed=9, iteration=None,
                                            kv_channels=24, hf="Qwen3ForCausalLM"),
                                       "hf-beside"),
    "mistral-window-tp2": (dict(arch="llama", tp=2, pp=1, dtype="fp32", groups=2, window=5,
                                untied=True, seed=10, hf="MistralForCausalLM"), "hf-beside"),
    "qwen3-moe-ep2": (dict(arch="llama", tp=1, pp=1, dtype="fp32", groups=2, untied=True,
                           qk_layernorm=True, seed=11, hf="Qwen3MoeForCausalLM",
                           moe=dict(experts=4, topk=2, ffn=48, ep=2)), "hf-beside"),
    "mixtral-window-tp2-bf16": (dict(arch="llama", tp=2, pp=1, dtype="bf16", groups=2,
                                     window=5, seed=12, hf="MixtralForCausalLM", layers=2,
                                     moe=dict(experts=4, topk=2, ffn=48)), "hf-beside"),
    "qwen2-moe-shared-gate-pp2": (dict(arch="llama", tp=1, pp=2, dtype="fp32", groups=2,
                                       bias=False, qkv_bias=True, untied=True, seed=13,
                                       hf="Qwen2MoeForCausalLM",
                                       moe=dict(experts=4, topk=1, ffn=32, pre_softmax=True,
                                                shared_ffn=40, shared_gate=True)),
                                  "hf-beside"),
}
# fsdp_dtensor is built to Megatron-FSDP's layout by the writer, not by Megatron-FSDP
# (which needs CUDA): see megatron_core_writer._save_fsdp_dtensor.
FORMATS = ("torch_dist", "torch", "fsdp_dtensor")


def _tokenizer_files(kind: str, where: Path) -> tuple[dict, int]:
    """Writes the tokenizer for `kind`; returns the args fields naming it and its size."""
    where.mkdir(parents=True, exist_ok=True)
    if kind == "sentencepiece":
        import sentencepiece as spm

        text = where / "corpus.txt"
        words = "the red chair lamp table window door green small near far left right".split()
        text.write_text("\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(9))
                                  for i in range(400)))
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(where / "spm"),
                                       vocab_size=300, model_type="bpe", byte_fallback=True,
                                       minloglevel=2)
        return ({"tokenizer_type": "Llama2Tokenizer",
                 "tokenizer_model": str(where / "spm.model")}, 300)
    tok = train_tokenizer(vocab_size=300)
    if kind == "gpt2-bpe":
        tok.backend_tokenizer.model.save(str(where))
        return ({"tokenizer_type": "GPT2BPETokenizer",
                 "vocab_file": "/data/gpt2/vocab.json", "merge_file": "/data/gpt2/merges.txt"},
                len(tok))
    tok.save_pretrained(where)
    stored = str(where) if kind == "hf-args" else "meta-llama/Llama-3.2-1B"
    return {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": stored}, len(tok)


def _prepare(name: str, root: Path) -> tuple[dict, Path]:
    """The tokenizer files and the writer's spec for checkpoint `name`."""
    spec, kind = CHECKPOINTS[name]
    out = root / name
    fields, vocab = _tokenizer_files(kind, out / "tokenizer-files")
    spec = {**_BASE, **spec, **fields, "vocab": vocab}
    (out / "spec.in.json").write_text(json.dumps(spec))
    return spec, out


def _write_all(names: list[str], root: Path) -> None:
    """One writer run per world size: its processes write every checkpoint of that size
    (an interpreter importing megatron.core costs more than a tiny model)."""
    groups: dict[int, list] = {}
    for name in names:
        spec, out = _prepare(name, root)
        world = spec["tp"] * spec["pp"] * (spec.get("moe") or {}).get("ep", 1)
        groups.setdefault(world, []).append([str(out / "spec.in.json"), str(out)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def run(world_jobs):
        world, jobs = world_jobs
        listing = root / f"jobs-{world}.json"
        listing.write_text(json.dumps(jobs))
        proc = subprocess.run([sys.executable, str(WRITER), "--jobs", str(listing)],
                              capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]

    with ThreadPoolExecutor(2) as pool:  # two cores
        list(pool.map(run, sorted(groups.items(), key=lambda g: -g[0] * len(g[1]))))
    for name in names:  # the files a user keeps beside the checkpoint
        kind, out = CHECKPOINTS[name][1], root / name
        for fmt in FORMATS:
            if kind == "hf-beside":
                shutil.copytree(out / "tokenizer-files", out / fmt / "tokenizer")
            elif kind == "gpt2-bpe":
                for f in ("vocab.json", "merges.txt"):
                    shutil.copy(out / "tokenizer-files" / f, out / fmt / f)


@pytest.fixture(autouse=True)
def _only_our_allow_list():
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("megatron-core")
    _write_all(list(CHECKPOINTS), root)
    return {name: root / name for name in CHECKPOINTS}


def _max_logit_error(converted_dir: Path, reference: Path) -> float:
    ref = torch.load(reference)
    model, loading = AutoModelForCausalLM.from_pretrained(converted_dir, dtype=torch.float32,
                                                          output_loading_info=True)
    # Hub names, every one of them: what vLLM and SGLang load too.
    assert not any(loading.values()), loading
    model.eval()
    with torch.no_grad():
        got = model(ref["input_ids"]).logits
    assert got.shape == ref["logits"].shape
    return (got - ref["logits"]).abs().max().item()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_converts_to_megatrons_own_logits(checkpoints, tmp_path, name, fmt):
    report = convert(checkpoints[name] / fmt, tmp_path / "hf")
    spec = json.loads((checkpoints[name] / "spec.json").read_text())
    error = _max_logit_error(report.out_dir, checkpoints[name] / "reference.pt")
    # fp32: Megatron's forward vs ours; bf16: against the bf16 weights upcast.
    assert error < 1e-4, f"max |logit difference| {error}"
    expected = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[spec["arch"]]
    if spec.get("qkv_bias") and not spec.get("bias"):
        expected = "Qwen2ForCausalLM"
    assert report.architecture == spec.get("hf", expected)
    assert report.format == f"Megatron-Core {fmt}"
    grid = (1, 1, 1) if fmt == "fsdp_dtensor" else (spec["tp"], spec["pp"], spec.get("vp") or 1)
    assert (report.tensor_parallel, report.pipeline_parallel, report.virtual_stages) == grid
    assert report.dtype == {"fp32": "float32", "bf16": "bfloat16"}[spec["dtype"]]
    assert report.iteration == (spec["iteration"] or "release")


def test_legacy_shards_with_transformer_engine_norm_names(checkpoints, tmp_path):
    """Trained with the Transformer-Engine spec, legacy shards name their norms after the
    fused linear layers (`linear_qkv.layer_norm_weight`); the same model must come out."""
    name = "gpt2-tanh-gelu-tp2"
    ckpt = _copy(checkpoints, name, "torch", tmp_path)
    renames = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
               "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}
    for shard in ckpt.rglob("model_optim_rng.pt"):
        sd = torch.load(shard, weights_only=False)
        model = {}
        for key, value in sd["model"].items():
            for old, new in renames.items():
                key = key.replace(old, new)
            model[key] = value
        assert any("linear_qkv.layer_norm_bias" in k for k in model)
        sd["model"] = model
        torch.save(sd, shard)
    out = convert(ckpt, tmp_path / "hf").out_dir
    assert _max_logit_error(out, checkpoints[name] / "reference.pt") < 1e-4


def _rename_in_dcp_index(folder: Path, rename) -> None:
    """Rewrites a torch.distributed.checkpoint index with `rename(name) -> name`."""
    import dataclasses
    import pickle

    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(folder)).read_metadata()
    metadata.state_dict_metadata = {rename(k): v for k, v in
                                    metadata.state_dict_metadata.items()}
    metadata.storage_data = {dataclasses.replace(index, fqn=rename(index.fqn)): info
                             for index, info in metadata.storage_data.items()}
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(metadata, f)


def test_fsdp_experts_of_transformer_engines_grouped_gemm(checkpoints, tmp_path):
    """Megatron-FSDP with `--moe-grouped-gemm` names experts `linear_fc1.weight<e>_w`."""
    import re

    ckpt = _copy(checkpoints, "qwen3-moe-ep2", "fsdp_dtensor", tmp_path)
    grouped = re.compile(r"experts\.local_experts\.(\d+)\.(linear_fc[12])\.weight")
    _rename_in_dcp_index(_iter_dir(ckpt), lambda k: grouped.sub(r"experts.\2.weight\1", k))
    out = convert(ckpt, tmp_path / "hf").out_dir
    assert _max_logit_error(out, checkpoints["qwen3-moe-ep2"] / "reference.pt") < 1e-4


@pytest.mark.parametrize("fmt", ["torch_dist", "fsdp_dtensor"])
def test_a_malicious_dcp_index_is_refused_and_runs_nothing(checkpoints, tmp_path, fmt):
    """`.metadata` is a pickle too (torch's own reader loads it with no allow-list)."""
    import pickle

    ckpt = _copy(checkpoints, "llama-gqa-tp1-pp1", fmt, tmp_path)
    marker = tmp_path / "pwned"
    (_iter_dir(ckpt) / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(MegatronFormatError, match=r"refusing to unpickle global '(posix|os)\."):
        convert(ckpt, tmp_path / "hf")
    assert not marker.exists()


def test_experts_behind_a_transformer_engine_pre_mlp_norm(checkpoints, tmp_path):
    """Trained with the Transformer-Engine spec, an expert layer's norm is saved as
    `pre_mlp_layernorm` in torch_dist too (only the local spec renames it): the same model
    must come out."""
    ckpt = _copy(checkpoints, "qwen3-moe-ep2", "torch_dist", tmp_path)
    _rename_in_dcp_index(_iter_dir(ckpt), lambda k: k.replace(
        "decoder.layers.mlp.linear_fc1.layer_norm_weight",
        "decoder.layers.pre_mlp_layernorm.weight"))
    out = convert(ckpt, tmp_path / "hf").out_dir
    assert _max_logit_error(out, checkpoints["qwen3-moe-ep2"] / "reference.pt") < 1e-4


def test_legacy_experts_of_transformer_engines_grouped_gemm(checkpoints, tmp_path):
    """Trained with `--moe-grouped-gemm` (TEGroupedMLP), legacy files name each rank's
    experts `mlp.experts.linear_fc1.weight<j>`: the same model must come out."""
    import re

    ckpt = _copy(checkpoints, "qwen3-moe-ep2", "torch", tmp_path)
    for shard in ckpt.rglob("model_optim_rng.pt"):
        sd = torch.load(shard, weights_only=False)
        sd["model"] = {re.sub(r"experts\.local_experts\.(\d+)\.(linear_fc[12])\.weight",
                              r"experts.\2.weight\1", k): v for k, v in sd["model"].items()}
        assert any(k.endswith("experts.linear_fc1.weight1") for k in sd["model"])
        torch.save(sd, shard)
    out = convert(ckpt, tmp_path / "hf").out_dir
    assert _max_logit_error(out, checkpoints["qwen3-moe-ep2"] / "reference.pt") < 1e-4


def test_the_reference_is_sensitive(checkpoints, tmp_path):
    """The oracle catches a wrong split: swap SwiGLU's gate and up halves and it fails."""
    from safetensors.torch import load_file, save_file

    out = convert(checkpoints["llama-gqa-tp2-pp2-untied"] / "torch", tmp_path / "hf").out_dir
    weights = load_file(out / "model.safetensors")
    gate, up = "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"
    weights[gate], weights[up] = weights[up], weights[gate]
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    reference = checkpoints["llama-gqa-tp2-pp2-untied"] / "reference.pt"
    assert _max_logit_error(out, reference) > 1e-2


# -- refused architectures: by argument name, before anything is served ------------------
def _copy(checkpoints, name: str, fmt: str, tmp_path: Path) -> Path:
    dst = tmp_path / f"{name}-{fmt}"
    shutil.copytree(checkpoints[name] / fmt, dst)
    return dst


def _pickles(ckpt: Path) -> list[Path]:
    return sorted(ckpt.rglob("common.pt")) + sorted(ckpt.rglob("model_optim_rng.pt"))


def _edit_args(ckpt: Path, **changes) -> Path:
    """Rewrites `args` in every pickle of the checkpoint (the test may unpickle freely)."""
    for path in _pickles(ckpt):
        sd = torch.load(path, weights_only=False)
        for key, value in changes.items():
            setattr(sd["args"], key, value)
        torch.save(sd, path)
    return ckpt


REFUSALS = {
    "multi_latent_attention": True, "qk_l2_norm": True, "mtp_num_layers": 1,
    "heterogeneous_layers_config_path": "layers.json", "hybrid_override_pattern": "M-M-",
    "apply_layernorm_1p": True, "apply_residual_connection_post_layernorm": True,
    "squared_relu": True, "rotary_interleaved": True, "rotary_seq_len_interpolation_factor": 4,
    "window_attn_skip_freq": 2, "window_size": (64, 8), "softmax_type": "learnable",
    "moe_layer_freq": 2, "moe_router_score_function": "sigmoid",
    "moe_router_enable_expert_bias": True, "moe_router_num_groups": 4,
    "moe_router_topk_scaling_factor": 2.5, "moe_router_load_balancing_type": "sinkhorn",
    "position_embedding_type": "yarn", "rotary_percent": 0.5, "normalization": "L2Norm",
    "swiglu": False,
}


@pytest.mark.parametrize("arg", REFUSALS)
def test_unsupported_features_are_refused_by_name(checkpoints, tmp_path, arg):
    ckpt = _edit_args(_copy(checkpoints, "llama-gqa-tp1-pp1", "torch_dist", tmp_path),
                      **{arg: REFUSALS[arg]})
    with pytest.raises(MegatronFormatError, match=rf"args\.{arg}=") as err:
        convert(ckpt, tmp_path / "hf")
    assert "unsupported" in str(err.value)
    # and what to do instead
    assert "--backend openai" in str(err.value) and "Megatron-Bridge" in str(err.value)
    assert not (tmp_path / "hf").exists()


# Expert layouts no Hugging Face class computes, refused with the argument that says so.
MOE_REFUSALS = {
    "moe_shared_expert_gate": ("qwen2-moe-shared-gate-pp2", False),
    "moe_router_pre_softmax": ("mixtral-window-tp2-bf16", True),
}


@pytest.mark.parametrize("arg", MOE_REFUSALS)
def test_expert_layouts_without_an_hf_class_are_refused(checkpoints, tmp_path, arg):
    name, value = MOE_REFUSALS[arg]
    ckpt = _edit_args(_copy(checkpoints, name, "torch", tmp_path), **{arg: value})
    if arg == "moe_shared_expert_gate":  # a checkpoint trained without the gate
        for shard in ckpt.rglob("model_optim_rng.pt"):
            sd = torch.load(shard, weights_only=False)
            sd["model"] = {k: v for k, v in sd["model"].items()
                           if not k.endswith("shared_experts.gate_weight")}
            torch.save(sd, shard)
    with pytest.raises(MegatronFormatError, match=rf"unsupported: .*args\.{arg}="):
        convert(ckpt, tmp_path / "hf")


@pytest.mark.parametrize("name,change", [
    ("llama3-rope-scaling-pp2", "rope_scaling"), ("mistral-window-tp2", "sliding_window"),
    ("qwen2-moe-shared-gate-pp2", "norm_topk_prob"), ("qwen3-moe-ep2", "swap_experts")])
def test_the_new_features_matter_to_the_oracle(checkpoints, tmp_path, name, change):
    """Each feature's conversion is checked, not passed by luck: without Llama 3.1's
    scaling, the window, the router's normalisation, or with two experts of different
    expert ranks swapped, Megatron's logits are missed by far."""
    from safetensors.torch import load_file, save_file

    out = convert(checkpoints[name] / "torch", tmp_path / "hf").out_dir
    config = json.loads((out / "config.json").read_text())
    if change == "rope_scaling":
        theta = config["rope_parameters"]["rope_theta"]
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    elif change == "sliding_window":
        config["sliding_window"] = None
    elif change == "norm_topk_prob":
        config["norm_topk_prob"] = not config["norm_topk_prob"]
    else:
        weights = load_file(out / "model.safetensors")
        for part in ("gate_proj", "up_proj", "down_proj"):
            a, b = (f"model.layers.1.mlp.experts.{e}.{part}.weight" for e in (0, 3))
            weights[a], weights[b] = weights[b], weights[a]
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config))
    assert _max_logit_error(out, checkpoints[name] / "reference.pt") > 1e-2


def test_legacy_refusal_and_args_that_disagree_with_the_tensors(checkpoints, tmp_path):
    moe = _edit_args(_copy(checkpoints, "gpt2-tanh-gelu-tp2", "torch", tmp_path), num_experts=4)
    with pytest.raises(MegatronFormatError, match=r"args\.num_experts=4 .*not Llama-style"):
        convert(moe, tmp_path / "hf")
    layers = _edit_args(_copy(checkpoints, "llama-gqa-tp1-pp1", "torch", tmp_path), num_layers=6)
    with pytest.raises(MegatronFormatError, match=r"args\.num_layers=6 but the checkpoint "
                                                  r"holds 4 layers"):
        convert(layers, tmp_path / "hf2")
    groups = _edit_args(_copy(checkpoints, "llama-gqa-tp2-pp2-untied", "torch_dist", tmp_path),
                        num_query_groups=4)
    with pytest.raises(MegatronFormatError, match=r"mismatched shapes: linear_qkv has"):
        convert(groups, tmp_path / "hf3")


def test_a_tensor_the_args_do_not_explain_is_refused(checkpoints, tmp_path):
    """Args that lie (no qk_layernorm) cannot sneak a tensor past the converter."""
    ckpt = _copy(checkpoints, "llama-gqa-tp1-pp1", "torch", tmp_path)
    shard = next(ckpt.rglob("model_optim_rng.pt"))
    sd = torch.load(shard, weights_only=False)
    sd["model"]["decoder.layers.0.self_attention.q_layernorm.weight"] = torch.ones(16)
    torch.save(sd, shard)
    with pytest.raises(MegatronFormatError, match=r"unsupported tensor 'decoder\.layers\.<n>\."
                                                  r"self_attention\.q_layernorm\.weight': "
                                                  r"args\.qk_layernorm=False does not"):
        convert(ckpt, tmp_path / "hf")


def test_serve_refuses_before_serving(checkpoints, tmp_path):
    ckpt = _edit_args(_copy(checkpoints, "llama-gqa-tp1-pp1", "torch_dist", tmp_path),
                      multi_latent_attention=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "arbridge.cli", "serve", "--model", str(ckpt),
                           "--port", "0"], capture_output=True, text=True, timeout=180, env=env,
                          cwd=REPO)
    assert proc.returncode != 0
    assert "args.multi_latent_attention=True" in proc.stderr
    assert "SERVING" not in proc.stderr.replace("NOT_SERVING", "")
    assert not list((tmp_path / "cache").rglob("config.json"))


# -- broken checkpoints: every failure names the file or tensor ---------------------------
def _iter_dir(ckpt: Path) -> Path:
    return next(p for p in ckpt.iterdir() if p.is_dir() and p.name != "tokenizer")


def test_torch_dist_missing_and_truncated_files(checkpoints, tmp_path):
    missing = _copy(checkpoints, "llama-gqa-tp2-pp2-untied", "torch_dist", tmp_path)
    victim = sorted(_iter_dir(missing).glob("*.distcp"))[-1]
    victim.unlink()
    with pytest.raises(MegatronFormatError, match=rf"missing file: .*{victim.name}"):
        convert(missing, tmp_path / "hf")

    cut = _copy(checkpoints, "gpt2-tanh-gelu-tp2", "torch_dist", tmp_path)
    victim = max(_iter_dir(cut).glob("*.distcp"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(MegatronFormatError, match=rf"truncated file: .*{victim.name} has"):
        convert(cut, tmp_path / "hf")

    common = _copy(checkpoints, "llama-gqa-tp1-pp1", "torch_dist", tmp_path)
    (_iter_dir(common) / "common.pt").unlink()
    with pytest.raises(MegatronFormatError, match=r"missing file: .*common\.pt"):
        convert(common, tmp_path / "hf")


def test_torch_dist_wrong_metadata(checkpoints, tmp_path):
    garbled = _copy(checkpoints, "llama-gqa-tp1-pp1", "torch_dist", tmp_path / "a")
    (_iter_dir(garbled) / ".metadata").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(MegatronFormatError, match=r"\.metadata: not readable"):
        convert(garbled, tmp_path / "hf")

    zarr = _copy(checkpoints, "llama-gqa-tp1-pp1", "torch_dist", tmp_path / "b")
    (_iter_dir(zarr) / "metadata.json").write_text(json.dumps({"sharded_backend": "zarr"}))
    with pytest.raises(MegatronFormatError, match=r"sharded_backend 'zarr' is not supported"):
        convert(zarr, tmp_path / "hf")

    not_json = _copy(checkpoints, "llama-gqa-tp1-pp1", "torch_dist", tmp_path / "c")
    (_iter_dir(not_json) / "metadata.json").write_text("{oops")
    with pytest.raises(MegatronFormatError, match=r"metadata\.json is not"):
        convert(not_json, tmp_path / "hf")

    tracker = _copy(checkpoints, "llama-gqa-tp1-pp1", "torch_dist", tmp_path / "d")
    (tracker / "latest_checkpointed_iteration.txt").write_text("200")
    with pytest.raises(MegatronFormatError, match=r"names '200' but .*iter_0000200 does not"):
        convert(tracker, tmp_path / "hf")


def test_legacy_missing_shard_missing_tensor_and_mismatched_shapes(checkpoints, tmp_path):
    ckpt = _copy(checkpoints, "llama-gqa-tp2-pp2-untied", "torch", tmp_path / "a")
    shutil.rmtree(_iter_dir(ckpt) / "mp_rank_01_001")
    with pytest.raises(MegatronFormatError, match=r"missing shard: .*mp_rank_01_001"):
        convert(ckpt, tmp_path / "hf")

    ckpt = _copy(checkpoints, "llama-gqa-tp2-pp2-untied", "torch", tmp_path / "b")
    for sub in ("mp_rank_01_000", "mp_rank_01_001"):
        shutil.rmtree(_iter_dir(ckpt) / sub)
    with pytest.raises(MegatronFormatError, match=r"args say 2 tensor x 2 pipeline ranks, the "
                                                  r"folder holds 1 x 2"):
        convert(ckpt, tmp_path / "hf")

    ckpt = _copy(checkpoints, "gpt2-tanh-gelu-tp2", "torch", tmp_path / "c")
    shard = _iter_dir(ckpt) / "mp_rank_01" / "model_optim_rng.pt"
    sd = torch.load(shard, weights_only=False)
    del sd["model"]["decoder.layers.2.mlp.linear_fc1.weight"]
    torch.save(sd, shard)
    with pytest.raises(MegatronFormatError, match=r"missing tensor: decoder\.layers\.2\.mlp\."
                                                  r"linear_fc1\.weight in .*mp_rank_01"):
        convert(ckpt, tmp_path / "hf")

    ckpt = _copy(checkpoints, "gpt2-tanh-gelu-tp2", "torch", tmp_path / "d")
    shard = _iter_dir(ckpt) / "mp_rank_01" / "model_optim_rng.pt"
    sd = torch.load(shard, weights_only=False)
    w = sd["model"]["decoder.layers.1.self_attention.linear_proj.weight"]
    sd["model"]["decoder.layers.1.self_attention.linear_proj.weight"] = w[:, :-1].clone()
    torch.save(sd, shard)
    with pytest.raises(MegatronFormatError, match=r"mismatched shapes: decoder\.layers\.1\."
                                                  r"self_attention\.linear_proj\.weight differs"):
        convert(ckpt, tmp_path / "hf")

    ckpt = _copy(checkpoints, "gpt2-tanh-gelu-tp2", "torch", tmp_path / "e")
    shard = _iter_dir(ckpt) / "mp_rank_00" / "model_optim_rng.pt"
    shard.write_bytes(shard.read_bytes()[:4096])
    with pytest.raises(MegatronFormatError, match=r"mp_rank_00.*not a readable torch checkpoint"):
        convert(ckpt, tmp_path / "hf")


class _Payload:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_malicious_pickle_is_refused_and_runs_nothing(checkpoints, tmp_path, fmt):
    ckpt = _copy(checkpoints, "llama-gqa-tp1-pp1", fmt, tmp_path)
    marker = tmp_path / "pwned"
    if fmt == "fsdp_dtensor":  # `args` is an entry inside the .distcp files
        import torch.distributed.checkpoint as dcp

        folder = _iter_dir(ckpt)
        state = {"args": None, "model": {"module": {
            name.removeprefix("model.module."): torch.empty(meta.size)
            for name, meta in dcp.FileSystemReader(str(folder)).read_metadata()
            .state_dict_metadata.items() if name.startswith("model.module.")}}}
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(folder)), no_dist=True)
        state["args"].evil = _Payload(marker)
        shutil.rmtree(folder)
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True)
    else:
        path = _pickles(ckpt)[0]
        sd = torch.load(path, weights_only=False)
        sd["args"].evil = _Payload(marker)
        torch.save(sd, path)
    with pytest.raises(MegatronFormatError, match=r"refusing to unpickle global '(posix|os)\."):
        convert(ckpt, tmp_path / "hf")
    assert not marker.exists()


def test_the_inert_globals_real_checkpoints_carry_are_all_there(checkpoints):
    """What the allow-list exists for: megatron-core's own pickles hold these."""
    found = set()
    for name in CHECKPOINTS:
        for fmt in FORMATS:
            for path in _pickles(checkpoints[name] / fmt):
                found |= set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert {"signal.Signals", "argparse.Namespace",
            "megatron.core.transformer.enums.AttnBackend", "numpy.ndarray"} <= found
    from arbridge.models.megatron.pickles import SAFE_GLOBALS
    allowed = {g if isinstance(g, str) else getattr(g, "__module__", "") + "." + g.__qualname__
               for g in (x[1] if isinstance(x, tuple) else x for x in SAFE_GLOBALS)}
    assert found <= allowed, found - allowed


# -- tokenizers -----------------------------------------------------------------------------
TOKENIZER_SOURCES = {"hf-beside": "Hugging Face tokenizer", "hf-args": "Hugging Face tokenizer",
                     "sentencepiece": "SentencePiece", "gpt2-bpe": "GPT-2 BPE"}


@pytest.mark.parametrize("name", ["llama-gqa-tp1-pp1", "llama-gqa-tp2-pp2-untied",
                                  "llama-tp2-bf16-release", "gpt2-tanh-gelu-tp2"])
def test_tokenizer_from_args_gives_the_training_ids(checkpoints, tmp_path, name):
    from transformers import AutoTokenizer

    kind = CHECKPOINTS[name][1]
    report = convert(checkpoints[name] / "torch_dist", tmp_path / "hf")
    assert report.tokenizer.startswith(TOKENIZER_SOURCES[kind])
    served = AutoTokenizer.from_pretrained(report.out_dir)
    text = "the red chair is near the far left window"
    files = checkpoints[name] / "tokenizer-files"
    if kind == "sentencepiece":
        import sentencepiece as spm
        expected = spm.SentencePieceProcessor(model_file=str(files / "spm.model")).encode(text)
    elif kind == "gpt2-bpe":
        from arbridge.models.megatron.tokenizers import gpt2_bpe
        expected = gpt2_bpe(files / "vocab.json", files / "merges.txt").encode(text)
    else:
        expected = AutoTokenizer.from_pretrained(files).encode(text, add_special_tokens=False)
    assert served.encode(text, add_special_tokens=False) == expected


def test_missing_and_unsupported_tokenizers_are_clear(checkpoints, tmp_path):
    ckpt = _copy(checkpoints, "llama-gqa-tp1-pp1", "torch_dist", tmp_path / "a")
    shutil.rmtree(ckpt / "tokenizer")
    with pytest.raises(MegatronFormatError, match=r"no Hugging Face tokenizer \(args\."
                                                  r"tokenizer_type=HuggingFaceTokenizer, args\."
                                                  r"tokenizer_model='meta-llama/.*--tokenizer"):
        convert(ckpt, tmp_path / "hf")
    # --tokenizer DIR wins over everything
    report = convert(ckpt, tmp_path / "hf", checkpoints["llama-gqa-tp1-pp1"] / "tokenizer-files")
    assert report.tokenizer.startswith("Hugging Face tokenizer")

    bpe = _copy(checkpoints, "gpt2-tanh-gelu-tp2", "torch", tmp_path / "b")
    (bpe / "merges.txt").unlink()
    with pytest.raises(MegatronFormatError, match=r"no GPT-2 tokenizer \(args\.tokenizer_type="
                                                  r"GPT2BPETokenizer\): put vocab\.json and "
                                                  r"merges\.txt"):
        convert(bpe, tmp_path / "hf2")

    null = _edit_args(_copy(checkpoints, "llama-gqa-tp1-pp1", "torch", tmp_path / "c"),
                      tokenizer_type="NullTokenizer")
    with pytest.raises(MegatronFormatError, match=r"args\.tokenizer_type=NullTokenizer is not "
                                                  r"supported: pass --tokenizer DIR"):
        convert(null, tmp_path / "hf3")


# -- the CLI and the server ---------------------------------------------------------------
def test_convert_cli_reports_what_it_found(checkpoints, tmp_path):
    out = tmp_path / "converted"
    proc = subprocess.run([sys.executable, "-m", "arbridge.cli", "convert",
                           str(checkpoints["llama-tp2-bf16-release"] / "torch_dist"), str(out)],
                          capture_output=True, text=True, timeout=180, cwd=REPO, check=True)
    assert "format:       Megatron-Core torch_dist, iteration release, TP=2 x PP=1" in proc.stdout
    assert "architecture: LlamaForCausalLM" in proc.stdout and "bfloat16" in proc.stdout
    assert "tokenizer:    SentencePiece" in proc.stdout
    assert "steps:        read index" in proc.stdout
    assert "weights (read, convert, write)" in proc.stdout
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize("name,fmt", [("llama-gqa-tp2-pp2-untied", "torch_dist"),
                                      ("gpt2-erf-gelu-tp2-pp2-bf16", "torch"),
                                      ("llama3-rope-scaling-pp2", "torch_dist"),
                                      ("qwen3-qk-norm-tp2-bf16-release", "torch_dist"),
                                      ("mistral-window-tp2", "torch"),
                                      ("qwen3-moe-ep2", "torch"),
                                      ("qwen3-moe-ep2", "fsdp_dtensor"),
                                      ("mixtral-window-tp2-bf16", "torch_dist"),
                                      ("qwen2-moe-shared-gate-pp2", "torch_dist")])
async def test_serve_greedy_equals_transformers_on_the_converted_model(checkpoints, tmp_path,
                                                                       name, fmt):
    from transformers import AutoTokenizer

    ckpt = checkpoints[name] / fmt
    running = await start_server(ckpt, tmp_path / "cache")
    try:
        request = spb.GenerateRequest(prompt="the red chair is near",
                                      sampling=pb.SamplingParams(max_new_tokens=20))
        _, done, _ = await collect(running.stub.Generate(request))
        info = await running.stub.GetModelInfo(spb.GetModelInfoRequest())
    finally:
        await running.close()
    assert info.source_format == "megatron"
    converted = next(p for p in (tmp_path / "cache").rglob("config.json")).parent
    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    ids = tok("the red chair is near", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=20, do_sample=False)
    expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert done[0].usage.completion_tokens == out.shape[1] - ids.shape[1] > 0
    assert done[0].text == expected
