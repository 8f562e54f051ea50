"""The fused decoder's matmuls: y = x W^T + b in the layout that is fastest here.

A decode step on a CPU is mostly weight reads, and which kernel reads them
fastest depends on the CPU, not on the model: MKL's plain GEMM, oneDNN with the
weight pre-packed in its blocked layout (bfloat16 re-lays it out on every call
otherwise), ArBridge's own kernel for a few rows (`csrc/skinny_matmul.h`,
built for this CPU: each weight row read once, straight from memory), or int8
weights (`--dtype int8`, torch's own weight-only kernel or the same few-row
kernel on the int8 rows).
Measured, not assumed: on an AVX-512 Xeon a float32 single row is fastest
plain and eight rows packed; other CPUs differ (MKL on AMD, AVX2-only oneDNN).
So `tune` times a whole step of every projection with each layout, once for a
single row and once for a batch, and keeps the faster per case.

int8 is weight-only: each output channel has one scale (symmetric, the scale
rounded to bfloat16 first so the stored weight is exactly q x scale), the
activations enter the kernel as bfloat16 (its fast path: measured, float32
inputs run 16x slower, float16 10x), accumulation is float32, and the result returns in
the model's dtype. Long prompt chunks take a dequantized copy (see
PROMPT_ROWS): the same arithmetic, summed in another order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

ONE_ROW, FEW_ROWS, MANY_ROWS = "1 row", "4 rows", "8 rows"
# Up to this many rows a matmul is a "few rows" case: two to four streams decoding,
# or one stream reading a short draft (speculation.py).
FEW = 4
# More rows than this in one matmul: a prompt being read. For int8 the
# dequantized copy pays only from here (measured on SmolLM2's shapes: at 64 rows
# the int8 kernel is 1.4x faster, at 128 and 512 rows the copy 1.7-1.9x).
PROMPT_ROWS = 96
# ArBridge's kernel for int8 weights with int8 activations, every pass when the
# `int8_activations` setting asks (csrc/int8_activations.h).
INT8_ACTIVATIONS = "int8-activations"
# The few-row kernel serves up to this many rows (a decode step of a few streams, or
# one stream reading its draft); past that a BLAS kernel blocks the work better.
SKINNY_ROWS = 16


def _skinny_module():
    from arbridge.engine import native_kernels

    return native_kernels.load("decode matmuls use BLAS only")


class Projection:
    """One linear layer of the fused decoder; W is [out, in]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None,
                 quantize: str | None = None):
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.dtype = weight.dtype
        self._float_bytes = weight.numel() * weight.element_size()
        self.kernels: dict[str, callable] = {}
        self.skinny = None
        if quantize == "int8":
            self.int8, self.scales = quantize_int8(weight)
            self.kernels["int8"] = self._int8
            self.weight = None  # the float copy stays the model's own, not ours
            if weight.device.type == "cpu" and _skinny_module() is not None:
                self.skinny = _skinny_module()
                self.kernels["skinny"] = self._skinny
                # int8 activations too: only where the `int8_activations` setting asks
                # (other numbers; `tune` leaves it out otherwise)
                self.kernels[INT8_ACTIVATIONS] = self._int8_activations
        else:
            self.weight = weight
            self.kernels["plain"] = self._plain
            self.packed = _pack(weight)
            if self.packed is not None:
                self.kernels["packed"] = self._packed
                # oneDNN on the plain weight (laid out per call): for prompt chunks
                # when only the plain copy is kept, near packed and well ahead of MKL
                # on some CPUs (measured, 128 rows on an AMD EPYC: 153 ms a step
                # against packed 142, MKL 191).
                self.kernels["dnnl"] = self._dnnl
            # In place only (a transposed view would need a second copy).
            if weight.device.type == "cpu" and weight.is_contiguous() \
                    and weight.dtype in (torch.float32, torch.bfloat16) \
                    and _skinny_module() is not None:
                self.skinny = _skinny_module()
                self.kernels["skinny"] = self._skinny
        # What runs a single row and what runs a decode batch (set by `tune`),
        # and what runs a prompt's many rows.
        first = next(iter(self.kernels))
        self.one_row = self.few_rows = self.many_rows = self.prompt_rows = self.kernels[first]
        if "packed" in self.kernels:  # the measured default until tuned
            self.few_rows = self.many_rows = self.prompt_rows = self.kernels["packed"]
            if weight.dtype != torch.float32:
                self.one_row = self.kernels["packed"]
        if quantize == "int8":
            # The int8 kernel's cost grows with the rows; for a long prompt
            # chunk, one dequantized copy serves every row faster.
            self.prompt_rows = self._int8_dequantized

    @property
    def weight_bytes(self) -> int:
        if "int8" in self.kernels:
            return self.int8.numel() + self.scales.numel() * self.scales.element_size()
        return self._float_bytes

    def drop_unused(self) -> bool:
        """After `tune`: forget the copy of the weight no chosen kernel reads (the
        plain one when packed won every case, or the packed one when plain did).
        True when the plain float weight is no longer needed here."""
        used = {self.one_row, self.few_rows, self.many_rows, self.prompt_rows}
        if self.kernels.get("dnnl") in used:
            used.add(self.kernels["plain"])  # its weight is the one dnnl reads
        if self.kernels.get("skinny") in used:
            used.add(self._wide())  # past SKINNY_ROWS
            if self.weight is not None:
                used.add(self.kernels["plain"])  # its weight is the one skinny reads
        if "plain" in self.kernels and self.kernels["plain"] not in used:
            del self.kernels["plain"]
            self.weight = None
        if "packed" in self.kernels and self.kernels["packed"] not in used:
            del self.kernels["packed"]
            self.packed = None
        for name in ("skinny", "dnnl", INT8_ACTIVATIONS):
            if name in self.kernels and self.kernels[name] not in used:
                del self.kernels[name]
        return "plain" not in self.kernels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel_for(x.numel() // x.shape[-1])(x)

    def kernel_for(self, rows: int):
        """The kernel a matmul of `rows` rows runs."""
        if rows == 1:
            return self.one_row
        if rows <= FEW:
            return self.few_rows
        return self.many_rows if rows <= PROMPT_ROWS else self.prompt_rows

    def _plain(self, x):
        return F.linear(x, self.weight, self.bias)

    def _dnnl(self, x):
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def _packed(self, x):
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def _int8(self, x):
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int8pack_mm(flat, self.int8, self.scales).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def _wide(self):
        """The BLAS-side kernel that takes rows past SKINNY_ROWS: the prompts' own, or
        the one reading the weight copy the few-row kernel reads."""
        if "int8" in self.kernels:
            return self._int8_wide
        if self.prompt_rows != self.kernels.get("skinny"):
            return self.prompt_rows
        return self.kernels["plain"]

    def _skinny(self, x):
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] > SKINNY_ROWS:
            return self._wide()(x)
        if self.weight is not None:
            y = self.skinny.skinny_matmul(flat.contiguous(), self.weight, None)
        else:  # int8 rows and their scales: the int8 kernel's arithmetic, summed in
            # another order (bfloat16 activations, float32 sums, a bfloat16 result)
            y = self.skinny.skinny_matmul(flat.contiguous(), self.int8, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def _int8_activations(self, x):
        # Every pass, prompts too (measured as fast as the dequantized copy at 128 and
        # 512 rows): a row's numbers then depend on nothing else in its pass, so a
        # draft, a batch or a prompt chunk beside it cannot change the text.
        flat = x.reshape(-1, self.in_features)
        y = self.skinny.int8_activations_matmul(flat.contiguous(), self.int8, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def native_operands(self, rows: int) -> tuple | None:
        """((weight, scales or None, bias or None), int8 activations?) as this
        projection's kernel for `rows` rows hands them to C++, for
        csrc/decoder_layers.h to call the same kernel; None when that kernel is not
        one of ArBridge's few-row kernels, or not at this many rows."""
        chosen = self.kernel_for(rows)
        if chosen == self.kernels.get(INT8_ACTIVATIONS):
            return (self.int8, self.scales, self.bias), True
        if chosen != self.kernels.get("skinny") or rows > SKINNY_ROWS:
            return None
        if self.weight is not None:
            return (self.weight, None, self.bias), False
        return (self.int8, self.scales, self.bias), False

    def _int8_wide(self, x):
        # The int8 kernel up to PROMPT_ROWS (faster there), the prompts' path past it.
        rows = x.numel() // x.shape[-1]
        if rows > PROMPT_ROWS and self.prompt_rows != self.kernels.get("skinny"):
            return self.prompt_rows(x)
        return self._int8(x)

    def _int8_dequantized(self, x):
        # The int8 kernel's arithmetic (bfloat16 inputs, float32 sums, a bfloat16
        # result) on an exact float32 copy: the sums differ only in their order,
        # so a rare output lands one bfloat16 step away from the kernel's.
        weight = self.int8.float() * self.scales.float()[:, None]
        y = F.linear(x.to(torch.bfloat16).float(), weight).to(torch.bfloat16).to(x.dtype)
        return y if self.bias is None else y + self.bias


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q [out, in] int8, scales [out] bfloat16)."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def int8_supported(device: torch.device | str) -> str:
    """Why int8 weight-only decoding cannot run on `device` ('' if it can)."""
    if torch.device(device).type != "cpu":
        return "int8 weight-only decoding runs on the CPU; on a GPU use bfloat16"
    if not hasattr(torch, "_weight_int8pack_mm"):
        return "this torch has no int8 weight-only kernel (torch._weight_int8pack_mm)"
    return ""


def _pack(weight: torch.Tensor) -> torch.Tensor | None:
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16) \
            or not torch.backends.mkldnn.is_available():
        return None
    try:
        # Packed for batches of about 8 rows: measured on par with other hints
        # at 1 and 32 rows.
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 8)
    except (RuntimeError, AttributeError) as exc:  # a torch or CPU without this path
        log.info("fused decoder: weights not packed (%s)", str(exc).splitlines()[0])
        return None


@dataclass(frozen=True)
class KernelChoice:
    """What `tune` may pick (the `matmul_kernels` and `matmul_weight_copies` settings)."""

    allowed: frozenset[str] | None = None  # None: every kernel
    # 1: every case uses kernels that read one copy of the float weights (the layout of
    # the fastest one-row kernel: one stream is the common case); 2: each case its
    # fastest, even if that keeps oneDNN's packed copy beside the plain one.
    copies: int = 1
    # int8 weights: quantize the activations too, in every pass, and take integer dot
    # products (`int8_activations` setting).
    int8_activations: bool = False


def _layout(projection: Projection, name: str) -> str:
    """Which copy of the weights kernel `name` reads."""
    if name == "packed":
        return "packed"
    return "plain" if projection.weight is not None else "int8"


def tune(projections: list[Projection], budget_s: float = 3.0,
         choice: KernelChoice = KernelChoice()) -> dict[str, dict[str, float]]:
    """Pick each case's kernel by timing every projection in turn (one decode
    step's weight reads, cold as in serving) with each candidate (those `choice`
    allows; with one weight copy, the later cases only those reading the one-row
    winner's copy). Returns {case: {kernel: ms per step}}; with one candidate
    nothing is timed."""
    names = sorted(set.intersection(*(set(p.kernels) for p in projections)))
    if INT8_ACTIVATIONS in names:
        names.remove(INT8_ACTIVATIONS)  # other numbers: chosen by setting, not by time
        if choice.int8_activations:
            for p in projections:
                p.one_row = p.few_rows = p.many_rows = p.prompt_rows = \
                    p.kernels[INT8_ACTIVATIONS]
            log.info("fused decoder kernels: int8 weights and int8 activations "
                     "(int8_activations)")
            return {}
    if choice.int8_activations:
        log.warning("int8_activations: only for int8 weights on a CPU where ArBridge's "
                    "kernels build; activations stay bfloat16")
    if choice.allowed:
        names = [name for name in names if name in choice.allowed] or names
    if len(names) == 1:  # pinned (or the only one): every case runs it
        for p in projections:
            p.one_row = p.few_rows = p.many_rows = p.kernels[names[0]]
    if len(names) < 2:
        return {}
    timings: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for case, rows, attribute in ((ONE_ROW, 1, "one_row"), (FEW_ROWS, FEW, "few_rows"),
                                  (MANY_ROWS, 8, "many_rows")):
        inputs = {}
        for p in projections:
            inputs.setdefault(p.in_features, torch.randn(rows, p.in_features, dtype=p.dtype))
        timings[case] = {}
        for name in names:
            def step(name=name, inputs=inputs):
                for p in projections:
                    p.kernels[name](inputs[p.in_features])
            step()  # first call: kernel set-up
            reps, spent = 0, 0.0
            while reps < 2 or (reps < 5 and spent < budget_s / 8):
                t0 = time.perf_counter()
                step()
                spent += time.perf_counter() - t0
                reps += 1
            timings[case][name] = spent / reps * 1e3
        best = min(timings[case], key=timings[case].get)
        for p in projections:
            setattr(p, attribute, p.kernels[best])
        if choice.copies == 1 and case == ONE_ROW:
            layout = _layout(projections[0], best)
            names = [name for name in names if _layout(projections[0], name) == layout]
            if layout == "plain":  # prompts too: no packed copy is kept
                for p in projections:
                    p.prompt_rows = p.kernels.get("dnnl", p.kernels["plain"])
            if len(names) == 1:
                for p in projections:
                    p.few_rows = p.many_rows = p.kernels[best]
                break
        if time.perf_counter() - started > budget_s:
            break  # a big model: the cases not reached keep their defaults
    log.info("fused decoder kernels: %s", describe(timings))
    return timings


def describe(timings: dict[str, dict[str, float]]) -> str:
    if not timings:
        return "one candidate, not timed"
    return "; ".join(f"{case}: {min(t, key=t.get)} ("
                     + ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(t.items())) + " per step)"
                     for case, t in timings.items())
