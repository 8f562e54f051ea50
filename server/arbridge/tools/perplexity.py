"""Perplexity of a fixed text through the engine's own forward pass (not a test).

What quantization costs the model, measured as `make eval` asks: the same text,
the same tokens, scored by float32 weights and by the weights being served, in
one run. The text is fixed here (written for ArBridge, in the register of its
captions and answers) so every run and every dtype scores the same tokens.
"""

from __future__ import annotations

import math

import torch

from arbridge.config import megatron_overrides
from arbridge.engine.matmul_layouts import KernelChoice
from arbridge.engine.runner import ModelRunner
from arbridge.models.loader import load_model

TEXT = """\
The kitchen is small and bright. A red wooden chair stands to the left of the door, \
about a metre from you, and a glass table is straight ahead, two metres away. On the \
table there is a white mug, a phone lying face down and a bowl of green apples. A tall \
lamp stands in the far right corner, next to the window, and it is switched off. The \
floor is clear between you and the table, so it is safe to walk forward.

You asked where you left your keys. I cannot see any keys on the table or on the \
counter. The drawer under the sink is half open; they might be inside it, or in the \
pocket of the coat hanging by the door. If you turn to your right you will see the \
shelf with the plants, and the keys are often left there.

The living room is larger. A grey sofa faces the television, with a low wooden table \
in front of it. Two books and a remote control lie on the table. A bicycle leans \
against the wall near the balcony door, and a cat is sleeping on the rug. The window \
blinds are half closed, so the light is dim on the left side of the room.

Outside, the street is quiet. A blue car is parked on the far side, and a woman is \
walking a dog along the pavement towards you. There is a bench under the tree at the \
corner and a bus stop a little further on. The traffic light at the crossing is red; \
wait for it to turn green before you cross.

In the workshop, the drill is on the bench to your left, plugged in. The box of \
screws is open beside it, and the safety glasses hang on a hook above the bench. A \
ladder stands against the back wall. The floor near the saw is covered in sawdust, \
so watch your step there. The fire extinguisher is by the exit, on the right.
"""


# Scored beside the dtypes: int8 weights with int8 activations (`int8_activations`).
INT8_ACTIVATIONS = "int8-activations"


def perplexity(lm, text: str = TEXT, int8_activations: bool = False) -> tuple[float, int]:
    """(perplexity, tokens scored) of `text` under `lm`, through the engine's
    runner (the fused decoder, int8 projections when `lm` is quantized, with int8
    activations too when asked)."""
    # Scored in one pass: over 96 tokens, so int8 takes its prompt path (the
    # dequantized copy, the same arithmetic as its decode kernel).
    ids = lm.tokenizer(text).input_ids[:lm.info.context_length]
    runner = ModelRunner(lm.model, lm.info.context_length, quantize=lm.quantize,
                         matmul_kernels=KernelChoice(int8_activations=int8_activations))
    with torch.inference_mode():
        runner.prepare()
        pool = runner.new_pool(0, block_tokens=len(ids))  # one block: the whole text
        logits = runner.forward(pool, [pool.allocate(1)], torch.tensor([ids]), [0],
                                keep=len(ids))[0]
        nll = torch.nn.functional.cross_entropy(logits[:-1].float(), torch.tensor(ids[1:]))
    return math.exp(nll.item()), len(ids) - 1


def compare(settings, dtypes: list[str]) -> list[tuple[str, float, int]]:
    """Perplexity of the fixed text for each dtype (float32 first, the reference);
    "int8-activations" is int8 weights with int8 activations."""
    rows = []
    for dtype in dict.fromkeys(["float32", *dtypes]):
        lm = load_model(settings.model, cache_dir=settings.cache_dir, device="cpu",
                        dtype="int8" if dtype == INT8_ACTIVATIONS else dtype,
                        tokenizer=settings.tokenizer, overrides=megatron_overrides(settings))
        rows.append((dtype, *perplexity(lm, int8_activations=dtype == INT8_ACTIVATIONS)))
        del lm
    return rows


def format_report(rows: list[tuple[str, float, int]], command: str, model: str) -> str:
    reference = rows[0][1]
    lines = [command, f"model {model}, a fixed {rows[0][2]}-token text, through the "
                      "engine's forward pass (the weights as served)", "",
             f"{'dtype':<18}{'perplexity':>12}{'vs float32':>12}"]
    for dtype, ppl, _ in rows:
        lines.append(f"{dtype:<18}{ppl:>12.3f}{ppl / reference - 1:>+12.2%}")
    return "\n".join(lines)
