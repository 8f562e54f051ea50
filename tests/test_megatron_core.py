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

import pytest
import torch
from transformers import AutoModelForCausalLM

from arbridge.models.megatron import MegatronFormatError, convert
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import REPO, TESTS, collect, start_server
from tiny_model import train_tokenizer

WRITER = TESTS / "megatron_core_writer.py"
_BASE = dict(layers=4, hidden=64, ffn=96, heads=4, positions=128, eps=1e-5, padded_vocab=384,
             iteration=100)

# name -> (spec, tokenizer kind). Between them: TP 1/2, PP 1/2, virtual pipeline, fp32 and
# bf16, GQA and MHA, tied and untied output, biases or none, Llama / Qwen2 / GPT-2 shapes,
# tanh and erf GeLU, iter_* and release, and every tokenizer source.
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
}
FORMATS = ("torch_dist", "torch")


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


def _write(name: str, root: Path) -> Path:
    spec, kind = CHECKPOINTS[name]
    out = root / name
    tok_dir = out / "tokenizer-files"
    fields, vocab = _tokenizer_files(kind, tok_dir)
    spec = {**_BASE, **spec, **fields, "vocab": vocab}
    (out / "spec.in.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(WRITER), str(out / "spec.in.json"), str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for fmt in FORMATS:  # the files a user keeps beside the checkpoint
        if kind == "hf-beside":
            shutil.copytree(tok_dir, out / fmt / "tokenizer")
        elif kind == "gpt2-bpe":
            for f in ("vocab.json", "merges.txt"):
                shutil.copy(tok_dir / f, out / fmt / f)
    return out


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("megatron-core")
    with ThreadPoolExecutor(2) as pool:  # the writer is mostly process start-up
        return dict(zip(CHECKPOINTS, pool.map(lambda n: _write(n, root), CHECKPOINTS)))


def _max_logit_error(converted_dir: Path, reference: Path) -> float:
    ref = torch.load(reference)
    model = AutoModelForCausalLM.from_pretrained(converted_dir, dtype=torch.float32).eval()
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
    assert report.architecture == expected
    assert report.format == f"Megatron-Core {fmt}"
    assert (report.tensor_parallel, report.pipeline_parallel) == (spec["tp"], spec["pp"])
    assert report.virtual_stages == (spec.get("vp") or 1)
    assert report.dtype == {"fp32": "float32", "bf16": "bfloat16"}[spec["dtype"]]
    assert report.iteration == (spec["iteration"] or "release")


def test_the_reference_is_sensitive(checkpoints, tmp_path):
    """The oracle catches a wrong split: swap SwiGLU's gate and up halves and it fails."""
    from safetensors.torch import load_file, save_file

    out = convert(checkpoints["llama-gqa-tp2-pp2-untied"] / "torch", tmp_path / "hf").out_dir
    weights = load_file(out / "model.safetensors")
    weights["model.layers.1.mlp.gate_proj.weight"], weights["model.layers.1.mlp.up_proj.weight"] \
        = weights["model.layers.1.mlp.up_proj.weight"], weights["model.layers.1.mlp.gate_proj.weight"]
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    reference = checkpoints["llama-gqa-tp2-pp2-untied"] / "reference.pt"
    assert _max_logit_error(out, reference) > 1e-2
