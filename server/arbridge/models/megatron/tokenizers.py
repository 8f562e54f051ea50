"""The tokenizer a Megatron checkpoint was trained with, from local files only.

`args.tokenizer_type` says which kind; the files are looked for, in order, in
`--tokenizer DIR`, the paths stored in `args` (when they exist on this machine),
and beside the checkpoint (its `--save` folder, the iteration folder, and a
`tokenizer/` folder in either). Nothing is ever downloaded.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from arbridge.models.megatron.pickles import MegatronFormatError

GPT2_EOS = "<|endoftext|>"
_SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")
_SAMPLE = "A red chair is 2 m to the left of you, near the lamp. Où est la fenêtre?"


@dataclass
class FoundTokenizer:
    tokenizer: object  # transformers PreTrainedTokenizerFast
    description: str  # what was loaded from where, for the conversion report


def _hf_dir(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def _bpe_files(folder: Path) -> bool:
    return (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()


def gpt2_bpe(vocab: Path, merges: Path):
    """GPT-2 byte-level BPE, as Megatron's GPT2BPETokenizer builds it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if tok.token_to_id(GPT2_EOS) is not None:
        tok.add_special_tokens([GPT2_EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=GPT2_EOS, bos_token=GPT2_EOS,
                                   unk_token=GPT2_EOS)


def _sentencepiece(model_file: Path):
    """A fast tokenizer converted from a SentencePiece model, checked to give the same
    ids as SentencePiece itself (a conversion that would not is refused)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory(prefix="arbridge-spm-") as tmp:
        shutil.copy(model_file, Path(tmp) / "tokenizer.model")
        tok = LlamaTokenizer.from_pretrained(tmp)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    if tok.encode(_SAMPLE, add_special_tokens=False) != sp.encode(_SAMPLE):
        raise MegatronFormatError(
            f"{model_file}: this SentencePiece model does not convert to a fast tokenizer with "
            "the same ids; pass --tokenizer DIR with a Hugging Face tokenizer for it")
    return tok


def _load_dir(folder: Path):
    from transformers import AutoTokenizer

    if _hf_dir(folder):
        return AutoTokenizer.from_pretrained(folder), f"Hugging Face tokenizer {folder}"
    if _bpe_files(folder):
        return (gpt2_bpe(folder / "vocab.json", folder / "merges.txt"),
                f"GPT-2 BPE {folder}/vocab.json + merges.txt")
    models = sorted(folder.glob("*.model"))
    if models:
        return _sentencepiece(models[0]), f"SentencePiece {models[0]}"
    raise MegatronFormatError(f"--tokenizer {folder}: no tokenizer.json, tokenizer_config.json, "
                              "vocab.json + merges.txt or *.model in it")


def _existing(value) -> Path | None:
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return path if path.exists() else None


def find_tokenizer(args, beside: list[Path], explicit: Path | None) -> FoundTokenizer:
    """The checkpoint's tokenizer; `beside` are the folders next to the weights."""
    if explicit is not None:
        if not explicit.is_dir():
            raise MegatronFormatError(f"--tokenizer {explicit}: not a directory")
        return FoundTokenizer(*_load_dir(explicit))
    kind = getattr(args, "tokenizer_type", None) or "GPT2BPETokenizer"
    folders = [f for b in beside for f in (b, b / "tokenizer") if f.is_dir()]
    if kind == "GPT2BPETokenizer":
        vocab, merges = _existing(getattr(args, "vocab_file", None)), _existing(
            getattr(args, "merge_file", None))
        if vocab and merges and vocab.is_file() and merges.is_file():
            return FoundTokenizer(gpt2_bpe(vocab, merges), f"GPT-2 BPE {vocab} + {merges}")
        for folder in folders:
            if _bpe_files(folder):
                return FoundTokenizer(gpt2_bpe(folder / "vocab.json", folder / "merges.txt"),
                                      f"GPT-2 BPE {folder}/vocab.json + merges.txt")
        raise MegatronFormatError(
            f"no GPT-2 tokenizer (args.tokenizer_type={kind}): put vocab.json and merges.txt "
            f"in {beside[0]} or pass --tokenizer DIR (ArBridge never downloads one)")
    if kind == "HuggingFaceTokenizer":
        stored = _existing(getattr(args, "tokenizer_model", None))
        for folder in ([stored] if stored and stored.is_dir() else []) + folders:
            if _hf_dir(folder):
                return FoundTokenizer(*_load_dir(folder))
        raise MegatronFormatError(
            f"no Hugging Face tokenizer (args.tokenizer_type={kind}, args.tokenizer_model="
            f"{getattr(args, 'tokenizer_model', None)!r} is not a folder here): put the "
            f"tokenizer files in {beside[0] / 'tokenizer'} or pass --tokenizer DIR")
    if kind in _SENTENCEPIECE_TYPES:
        stored = _existing(getattr(args, "tokenizer_model", None))
        if stored and stored.is_file():
            return FoundTokenizer(_sentencepiece(stored), f"SentencePiece {stored}")
        for folder in folders:
            if _hf_dir(folder):
                return FoundTokenizer(*_load_dir(folder))
            models = sorted(folder.glob("*.model"))
            if models:
                return FoundTokenizer(_sentencepiece(models[0]), f"SentencePiece {models[0]}")
        raise MegatronFormatError(
            f"no SentencePiece model (args.tokenizer_type={kind}, args.tokenizer_model="
            f"{getattr(args, 'tokenizer_model', None)!r} does not exist here): put the .model "
            f"file in {beside[0]} or pass --tokenizer DIR")
    raise MegatronFormatError(
        f"args.tokenizer_type={kind} is not supported: pass --tokenizer DIR with a Hugging "
        "Face tokenizer (tokenizer.json) that gives the same ids")
