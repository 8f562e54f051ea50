"""Megatron checkpoints -> a safetensors Hugging Face directory, in-process.

Four layouts, told apart by their files and keys:

- Megatron-Core `torch_dist` (Megatron-LM's default `--ckpt-format`):
  `core_sources.TorchDistSource`;
- Megatron-Core legacy `torch` (`mp_rank_*/model_optim_rng.pt` with `decoder.layers.*`):
  `core_sources.LegacyCoreSource`;
- Megatron-FSDP `fsdp_dtensor` (plain torch.distributed.checkpoint):
  `fsdp_source.FsdpDtensorSource`;
  all three converted by `core_to_hf` to the Hugging Face class their `args` say;
- the pre-Megatron-Core GPT layout (`model.language_model.*`, e.g. NVIDIA's
  Megatron-GPT2 345M zip): `gpt2_legacy`, to GPT-2.

Pickles go through `pickles.load_pickle` (no code runs from a checkpoint); the
tokenizer comes from local files (`tokenizers.find_tokenizer`). The output is
published whole or not at all (`models.publish.publishing`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from arbridge.models.megatron.gpt2_legacy import Overrides
from arbridge.models.megatron.layout import fingerprint, is_megatron_checkpoint
from arbridge.models.megatron.pickles import MegatronFormatError
from arbridge.models.megatron.tokenizers import find_tokenizer

__all__ = ["ConversionReport", "MegatronFormatError", "Overrides", "build_tokenizer", "convert",
           "fingerprint", "is_megatron_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class ConversionReport:
    """What `convert` found and how long each step took (printed by `arbridge convert`)."""

    source: str
    out_dir: Path
    format: str = ""
    iteration: object = None
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    virtual_stages: int = 1
    architecture: str = ""
    dtype: str = ""
    parameters: int = 0
    tokenizer: str = ""
    steps: list[tuple[str, float]] = field(default_factory=list)

    def lines(self) -> list[str]:
        grid = f"TP={self.tensor_parallel} x PP={self.pipeline_parallel}"
        if self.virtual_stages > 1:
            grid += f" (virtual stages {self.virtual_stages})"
        return [f"source:       {self.source}",
                f"format:       {self.format}, iteration {self.iteration}, {grid}",
                f"architecture: {self.architecture}, {self.parameters / 1e6:.1f}M parameters, "
                f"{self.dtype}",
                f"tokenizer:    {self.tokenizer}",
                "steps:        " + ", ".join(f"{name} {sec:.2f} s" for name, sec in self.steps)]


class _Timer:
    def __init__(self, report: ConversionReport):
        self.report, self.last = report, time.perf_counter()

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.report.steps.append((name, now - self.last))
        self.last = now


def build_tokenizer(folder: Path):
    """GPT-2 BPE (vocab.json + merges.txt) or a tokenizer folder (kept for callers)."""
    return find_tokenizer(None, [folder], None).tokenizer


def _core_source(folder: Path):
    """A Megatron-Core source for `folder`, or None for the pre-Core GPT layout."""
    from arbridge.models.megatron import layout
    from arbridge.models.megatron.core_sources import LegacyCoreSource, TorchDistSource
    from arbridge.models.megatron.gpt2_legacy import is_legacy_gpt2
    from arbridge.models.megatron.pickles import load_pickle

    kind = layout.checkpoint_format(folder)
    if kind == "torch_dist":
        return TorchDistSource(folder)
    if kind == "fsdp_dtensor":
        from arbridge.models.megatron.fsdp_source import FsdpDtensorSource

        return FsdpDtensorSource(folder)
    shards = layout.find_shards(folder)
    first = load_pickle(shards[(0, 0, 0)], str(shards[(0, 0, 0)]), mmap=True)
    if is_legacy_gpt2(first):
        return None
    args = first.get("args")
    del first
    # `mp_rank_00_001` is expert rank 1 when the args say experts and no pipeline.
    if (int(getattr(args, "expert_model_parallel_size", None) or 1) > 1
            and int(getattr(args, "pipeline_model_parallel_size", None) or 1) == 1):
        shards = layout.find_shards(folder, expert_parallel=True)
    return LegacyCoreSource(shards)


def _write_source_note(folder: Path, report: ConversionReport, written=None) -> None:
    if written is not None:
        report.architecture, report.dtype, report.parameters = (
            written.architecture, written.dtype, written.parameters)
    (folder / "arbridge_source.json").write_text(json.dumps({
        "source": report.source, "format": report.format, "iteration": report.iteration,
        "tensor_parallel": report.tensor_parallel, "pipeline_parallel": report.pipeline_parallel,
        "virtual_stages": report.virtual_stages, "architecture": report.architecture,
        "dtype": report.dtype, "parameters": report.parameters, "tokenizer": report.tokenizer,
    }, indent=2, default=str))


def convert(source: Path, out_dir: Path, tokenizer_dir: Path | None = None,
            overrides: Overrides | None = None) -> ConversionReport:
    """Megatron dir or zip -> safetensors HF directory with tokenizer files."""
    from arbridge.models.megatron import layout

    report = ConversionReport(source=str(source), out_dir=out_dir)
    timer = _Timer(report)
    with tempfile.TemporaryDirectory(prefix="arbridge-megatron-") as tmp:
        folder = (layout.extract_zip(source, Path(tmp)) if source.is_file()
                  else layout.iteration_dir(source))
        beside = [source.parent] if source.is_file() else list(dict.fromkeys([source, folder]))
        core = _core_source(folder)
        timer.step("read index")
        if core is not None:
            _convert_core(core, beside, tokenizer_dir, report, timer)
        else:
            _convert_legacy_gpt2(folder, beside, tokenizer_dir, overrides, report, timer)
    for line in report.lines():
        log.info("megatron conversion: %s", line)
    return report


def _convert_core(core, beside: list[Path], tokenizer_dir: Path | None,
                  report: ConversionReport, timer: _Timer) -> None:
    """A Megatron-Core checkpoint (torch_dist or torch), tensor by tensor."""
    from arbridge.models.megatron.core_to_hf import plan_architecture, write_model
    from arbridge.models.publish import publishing

    arch = plan_architecture(core.args, core)
    found = find_tokenizer(core.args, beside, tokenizer_dir)
    timer.step("tokenizer")
    report.format = f"Megatron-Core {core.format}"
    report.iteration = core.iteration
    report.tensor_parallel, report.pipeline_parallel = (core.tensor_parallel,
                                                        core.pipeline_parallel)
    report.virtual_stages = core.virtual_stages
    report.tokenizer = found.description
    with publishing(report.out_dir, f"converted from Megatron checkpoint {report.source}") \
            as staging:
        written = write_model(core, arch, found.tokenizer, staging)
        found.tokenizer.save_pretrained(staging)
        _write_source_note(staging, report, written)
        timer.step("weights (read, convert, write)")


def _convert_legacy_gpt2(folder: Path, beside: list[Path], tokenizer_dir: Path | None,
                         overrides: Overrides | None, report: ConversionReport,
                         timer: _Timer) -> None:
    """The pre-Megatron-Core GPT-2 layout: small models, merged in memory and saved
    through transformers."""
    from arbridge.models.megatron import gpt2_legacy, layout
    from arbridge.models.publish import publishing

    found = find_tokenizer(None, beside, tokenizer_dir)
    merged = gpt2_legacy.merge_shards(layout.find_shards(folder),
                                      (overrides or Overrides()).num_attention_heads)
    model = gpt2_legacy.to_gpt2(merged, found.tokenizer, overrides)
    report.format = f"Megatron-LM GPT (checkpoint_version {merged.checkpoint_version})"
    report.iteration = merged.extra.get("iteration")
    report.tensor_parallel, report.pipeline_parallel = (merged.tensor_parallel,
                                                        merged.pipeline_parallel)
    report.architecture = type(model).__name__
    report.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    report.parameters = sum(p.numel() for p in model.parameters())
    report.tokenizer = found.description
    timer.step("weights")
    with publishing(report.out_dir, f"converted from Megatron checkpoint {report.source}") \
            as staging:
        model.save_pretrained(staging, safe_serialization=True)
        found.tokenizer.save_pretrained(staging)
        _write_source_note(staging, report)
        timer.step("write safetensors")
