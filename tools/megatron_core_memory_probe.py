"""Peak memory of converting a 1B-parameter Megatron-Core `torch_dist` checkpoint.

Writes a Llama-shaped checkpoint of TinyLlama-1.1B's shape (22 layers, hidden 2048,
FFN 5632, 32 heads in 4 query groups, vocabulary 32000, untied output) with
megatron-core itself (tests/megatron_core_writer.py, bf16 like `--bf16` training,
with fp32 Adam moments beside the weights as training leaves them), then runs
`arbridge convert` on it in a fresh process and reports that process's peak RSS
against the checkpoint's size, and the peak of an interpreter that only imports
what the converter imports (the floor).

Usage: .venv/bin/python tools/megatron_core_memory_probe.py WORKDIR [--layers N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# Runs one command and prints the peak RSS (KiB) of that command alone on stderr's last
# line: RUSAGE_CHILDREN of a wrapper whose only child it is.
_WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(code)")


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, stdout) of a child process."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=REPO)
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return seconds, peak_kib / 1024, proc.stdout


def _gpt2_sized_vocab(folder: Path, size: int) -> None:
    """A byte-level BPE with `size` tokens, so the embedding keeps all its rows."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = []
    for a in alphabet:
        for b in alphabet:
            if len(vocab) < size - 1:
                vocab[a + b] = len(vocab)
                merges.append((a, b))
    vocab["<|endoftext|>"] = size - 1
    folder.mkdir(parents=True, exist_ok=True)
    Tokenizer(models.BPE(vocab=vocab, merges=merges)).model.save(str(folder))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--layers", type=int, default=22)
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint"
    spec = dict(arch="llama", tp=1, pp=1, dtype="bf16", layers=args.layers, hidden=2048,
                ffn=5632, heads=32, groups=4, positions=2048, eps=1e-5, vocab=32000,
                padded_vocab=32000, untied=True, seed=1, iteration=1000,
                tokenizer_type="GPT2BPETokenizer", formats=["torch_dist"], reference=False)
    if not (ckpt / "torch_dist" / "latest_checkpointed_iteration.txt").exists():
        (work / "spec.json").write_text(json.dumps(spec))
        seconds, _, _ = _run([sys.executable, str(REPO / "tests" / "megatron_core_writer.py"),
                              str(work / "spec.json"), str(ckpt)],
                             {"OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"})
        print(f"wrote the checkpoint with megatron-core in {seconds:.0f} s")
    _gpt2_sized_vocab(ckpt / "torch_dist", 32000)
    files = [p for p in (ckpt / "torch_dist").rglob("*") if p.is_file()]
    on_disk = sum(p.stat().st_size for p in files) / 2**20

    floor_s, floor, _ = _run([sys.executable, "-c", "import torch, transformers, safetensors; "
                              "import arbridge.models.megatron.core_to_hf; "
                              "import torch.distributed.checkpoint; transformers.LlamaConfig"])
    out = work / "converted"
    seconds, peak, report = _run([sys.executable, "-m", "arbridge.cli", "convert",
                                  str(ckpt / "torch_dist"), str(out)])
    weights = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 2**20
    result = {"checkpoint_on_disk_mib": round(on_disk), "weights_mib": round(weights),
              "convert_seconds": round(seconds, 1), "convert_peak_rss_mib": round(peak),
              "import_floor_rss_mib": round(floor),
              "peak_over_floor_per_weight": round((peak - floor) / weights, 2)}
    print(report.strip())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
