"""Scene, speech and dialogue -> the token ids the model is prompted with.

With a chat template (instruct models) the conversation goes through it;
without one (base models such as Megatron GPT-2) a plain "User:/Assistant:"
transcript is used. History is trimmed from the oldest turns until the prompt
plus the reply budget fits the context window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from arbridge.scene_text import describe_scene
from arbridge.v1 import types_pb2 as pb

DESCRIBE_INSTRUCTION = "Describe what is around me in one or two short sentences."

_ROLE_NAMES = {pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant", pb.ROLE_SYSTEM: "system"}


class PromptTooLong(ValueError):
    """Even with all history dropped the prompt does not fit."""

    def __init__(self, prompt_tokens: int, budget: int):
        super().__init__(f"prompt is {prompt_tokens} tokens; at most {budget} fit the context "
                         "window with the requested max_new_tokens")
        self.prompt_tokens = prompt_tokens
        self.budget = budget


@dataclass
class Prompt:
    ids: list[int]
    # The text the ids were made from, for backends that take text (upstream
    # engines); `special_tokens` says whether the tokenizer added BOS etc.
    text: str = ""
    special_tokens: bool = True
    dropped_turns: int = 0
    # Dense features (encoder, vector) whose projections take the first
    # `prefix_len` positions; `ids` starts with that many placeholders.
    features: list[tuple[str, list[float]]] = field(default_factory=list)
    prefix_len: int = 0

    def with_prefix(self, features: list[tuple[str, list[float]]], prefix_len: int,
                    placeholder: int) -> Prompt:
        return Prompt([placeholder] * prefix_len + self.ids, self.text, self.special_tokens,
                      self.dropped_turns, list(features), prefix_len)


class PromptBuilder:
    def __init__(self, tokenizer, context_length: int, system_prompt: str):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.system_prompt = system_prompt
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))

    # -- public ---------------------------------------------------------------
    def raw(self, text: str, max_new_tokens: int) -> Prompt:
        ids = self.tokenizer(text, add_special_tokens=True).input_ids
        self._check_fits(len(ids), max_new_tokens)
        return Prompt(ids, text, special_tokens=True)

    def describe(self, scene: pb.SceneFeatures, instruction: str, max_new_tokens: int) -> Prompt:
        # A caption is a one-turn conversation about the scene.
        return self.converse(scene, [], instruction.strip() or DESCRIBE_INSTRUCTION,
                             max_new_tokens)

    def converse(self, scene: pb.SceneFeatures | None, history: list[pb.DialogueTurn],
                 user_text: str, max_new_tokens: int, system_prompt: str = "") -> Prompt:
        system = system_prompt.strip() or self.system_prompt
        scene_text = describe_scene(scene) if scene is not None else ""
        if scene_text:
            system = f"{system}\n\nScene: {scene_text}"
        return self._fit(system, list(history), user_text, max_new_tokens)

    # -- internals ---------------------------------------------------------
    def _fit(self, system: str, history: list[pb.DialogueTurn], user: str,
             max_new_tokens: int) -> Prompt:
        dropped = 0
        while True:
            prompt = self._encode(system, history, user)
            if len(prompt.ids) + max_new_tokens <= self.context_length or not history:
                break
            history = history[1:]  # drop the oldest turn first
            dropped += 1
        self._check_fits(len(prompt.ids), max_new_tokens)
        prompt.dropped_turns = dropped
        return prompt

    def _check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        budget = self.context_length - max_new_tokens
        if prompt_tokens > budget:
            raise PromptTooLong(prompt_tokens, max(budget, 0))

    def _encode(self, system: str, history: list[pb.DialogueTurn], user: str) -> Prompt:
        # System turns from the history join the system prompt: many chat
        # templates accept a system message only at the start.
        extra_system = [t.text for t in history if t.role == pb.ROLE_SYSTEM]
        if extra_system:
            system = "\n\n".join([system, *extra_system])
        turns = [(_ROLE_NAMES[t.role], t.text) for t in history if t.role != pb.ROLE_SYSTEM]
        if self.has_chat_template:
            messages = [{"role": "system", "content": system}]
            messages += [{"role": r, "content": c} for r, c in turns]
            messages.append({"role": "user", "content": user})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
            # The template writes any BOS itself.
            return Prompt(self.tokenizer(text, add_special_tokens=False).input_ids, text,
                          special_tokens=False)
        lines = [system, ""]
        lines += [f"{r.capitalize()}: {c}" for r, c in turns]
        lines += [f"User: {user}", "Assistant:"]
        text = "\n".join(lines)
        return Prompt(self.tokenizer(text, add_special_tokens=True).input_ids, text)
