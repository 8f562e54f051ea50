"""Measure what a Megatron-GPT2 345M checkpoint costs ArBridge (no download needed).

Builds a randomly initialised GPT-2 of the 345M shape (24 layers, hidden 1024,
16 heads, 1024 positions, vocab 50257 padded to 50304), writes it in
Megatron-LM's layout as fp16 (like NVIDIA's release) with the test suite's
exporter, then times the conversion, the load of the converted directory and
greedy decoding. Each step runs in a fresh interpreter and reports its own
peak memory (RSS).

Usage: .venv/bin/python tools/megatron_345m_probe.py WORKDIR [--tp N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_export(work: Path, tp: int) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from megatron_export import export
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel

    ckpt = work / "megatron-345m"
    ckpt.mkdir(parents=True, exist_ok=True)
    # A GPT-2-sized byte-level BPE vocabulary: 50,256 tokens plus <|endoftext|>.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = []
    for a in alphabet:
        for b in alphabet:
            if len(vocab) < 50256:
                vocab[a + b] = len(vocab)
                merges.append((a, b))
    vocab["<|endoftext|>"] = 50256
    Tokenizer(models.BPE(vocab=vocab, merges=merges)).model.save(str(ckpt))
    config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=1024, n_layer=24, n_head=16)
    model = GPT2LMHeadModel(config).half().eval()
    export(model, ckpt, tp=tp, version=0.0, new_names=False, padded_vocab=50304)
    size = sum(p.stat().st_size for p in ckpt.rglob("*.pt")) / 2**20
    return {"checkpoint_mib": size}


def step_convert(work: Path) -> dict:
    from arbridge.models import megatron

    megatron.convert(work / "megatron-345m", work / "converted")
    size = sum(p.stat().st_size for p in (work / "converted").iterdir()) / 2**20
    return {"converted_mib": size}


def step_load_and_decode(work: Path) -> dict:
    import torch

    from arbridge.models.loader import load_model

    started = time.perf_counter()
    lm = load_model(str(work / "converted"), cache_dir=work, dtype="float32")
    load_s = time.perf_counter() - started
    ids = torch.tensor([[464, 2068, 7586, 21831] * 8])
    with torch.inference_mode():
        started = time.perf_counter()
        lm.model.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
        decode_s = time.perf_counter() - started
    return {"load_s": load_s, "tokens_per_s": 32 / decode_s,
            "parameters": lm.info.parameter_count}


STEPS = {"export": step_export, "convert": step_convert, "load": step_load_and_decode}


def run_step(name: str, work: Path, tp: int) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, str(work), "--tp", str(tp), "--step", name],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--step", choices=STEPS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.step:
        kwargs = {"tp": args.tp} if args.step == "export" else {}
        result = STEPS[args.step](args.workdir, **kwargs)
        result["peak_rss_mib"] = peak_mb()
        print(json.dumps(result))
        return
    e = run_step("export", args.workdir, args.tp)
    print(f"synthetic 345M Megatron checkpoint, fp16, TP={args.tp}: "
          f"{e['checkpoint_mib']:.0f} MiB on disk")
    c = run_step("convert", args.workdir, args.tp)
    print(f"convert (merge + save safetensors): {c['wall_s']:.1f} s, peak RSS "
          f"{c['peak_rss_mib']:.0f} MiB, output {c['converted_mib']:.0f} MiB")
    ld = run_step("load", args.workdir, args.tp)
    print(f"serve-time load of the converted dir as float32: {ld['load_s']:.1f} s; "
          f"{ld['parameters'] / 1e6:.0f}M parameters; greedy decode at batch 1 "
          f"(transformers generate, 32-token prompt): {ld['tokens_per_s']:.1f} tokens/s; "
          f"peak RSS {ld['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
