"""Megatron-LM checkpoints: every layout loads logits-exact; broken ones fail clearly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from megatron_export import export
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from arbridge.models.loader import ModelLoadError, load_model
from arbridge.models.megatron import MegatronFormatError, Overrides, convert
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import REPO, collect, start_server
from tiny_model import train_tokenizer


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A random 4-layer GPT-2 and its tokenizer as vocab.json + merges.txt."""
    tok_dir = tmp_path_factory.mktemp("gpt2-bpe")
    tokenizer = train_tokenizer()
    tokenizer.backend_tokenizer.model.save(str(tok_dir))
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=4,
                        n_head=4, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    return model, tok_dir


def write_checkpoint(source, root: Path, **layout) -> Path:
    model, tok_dir = source
    export(model, root, **layout)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tok_dir / name, root / name)
    return root


def assert_same_logits(reference, converted):
    ids = torch.randint(0, reference.config.vocab_size, (2, 24), generator=torch.Generator()
                        .manual_seed(3))
    with torch.no_grad():
        expected = reference(ids).logits
        got = converted(ids).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


LAYOUTS = {
    "tp1-v3-new-names": dict(tp=1, pp=1, version=3.0, new_names=True),
    "tp2-v1-old-names-padded": dict(tp=2, pp=1, version=1.0, new_names=False, padded_vocab=512),
    "tp2xpp2-v3-padded": dict(tp=2, pp=2, version=3.0, new_names=True, padded_vocab=448),
    "tp2-v0-old-names": dict(tp=2, pp=1, version=0.0, new_names=False),
    "tp1xpp2-v2-iteration-model_rng": dict(tp=1, pp=2, version=2.0, iteration=1500,
                                           file_name="model_rng.pt"),
    "tp4-v3-no-args": dict(tp=4, pp=1, version=3.0, with_args=False),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_converts_logits_exact(source, tmp_path, name):
    layout = LAYOUTS[name]
    ckpt = write_checkpoint(source, tmp_path / "ckpt", **layout)
    overrides = Overrides(num_attention_heads=4) if not layout.get("with_args", True) else None
    out = convert(ckpt, tmp_path / "hf", overrides=overrides).out_dir
    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert converted.config.vocab_size == source[0].config.vocab_size  # padding trimmed
    assert_same_logits(source[0], converted)
    assert (out / "tokenizer.json").exists()


def test_no_args_and_no_heads_flag_is_a_clear_error(source, tmp_path):
    ckpt = write_checkpoint(source, tmp_path / "ckpt", with_args=False)
    with pytest.raises(MegatronFormatError, match="--num-attention-heads"):
        convert(ckpt, tmp_path / "hf")


def test_nvidia_style_zip(source, tmp_path):
    ckpt = write_checkpoint(source, tmp_path / "ckpt", version=0.0, new_names=False)
    zip_path = tmp_path / "dist" / "megatron_lm_345m_v0.0.zip"
    zip_path.parent.mkdir()
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.write(ckpt / "release" / "mp_rank_00" / "model_optim_rng.pt",
                 "release/mp_rank_00/model_optim_rng.pt")
        zf.writestr("latest_checkpointed_iteration.txt", "release")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(ckpt / name, zip_path.parent / name)
    loaded = load_model(str(zip_path), cache_dir=tmp_path / "cache")
    assert loaded.info.source_format == "megatron"
    assert_same_logits(source[0], loaded.model)


def test_tokenizer_flag_and_missing_tokenizer(source, tmp_path):
    model, tok_dir = source
    ckpt = export(model, tmp_path / "ckpt")  # no vocab.json / merges.txt beside it
    with pytest.raises(ModelLoadError, match="vocab.json and merges.txt"):
        load_model(str(ckpt), cache_dir=tmp_path / "cache")
    loaded = load_model(str(ckpt), cache_dir=tmp_path / "cache", tokenizer=str(tok_dir))
    assert_same_logits(model, loaded.model)


# -- broken checkpoints ----------------------------------------------------------------
def test_missing_shard_is_named(source, tmp_path):
    ckpt = write_checkpoint(source, tmp_path / "ckpt", tp=2, pp=2)
    shutil.rmtree(ckpt / "release" / "mp_rank_01_001")
    with pytest.raises(MegatronFormatError, match="missing shard: .*mp_rank_01_001"):
        convert(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_mismatched_shapes_are_named(source, tmp_path):
    ckpt = write_checkpoint(source, tmp_path / "ckpt", tp=2)
    shard = ckpt / "release" / "mp_rank_01" / "model_optim_rng.pt"
    sd = torch.load(shard, weights_only=False)
    body = sd["model"]["language_model"]["encoder"]
    body["layers.1.mlp.dense_h_to_4h.weight"] = body["layers.1.mlp.dense_h_to_4h.weight"][:-3]
    torch.save(sd, shard)
    with pytest.raises(MegatronFormatError,
                       match=r"mismatched shapes: layers\.1\.mlp\.dense_h_to_4h\.weight"):
        convert(ckpt, tmp_path / "hf")


def test_unknown_layout_is_named(source, tmp_path):
    ckpt = write_checkpoint(source, tmp_path / "ckpt")
    shard = ckpt / "release" / "mp_rank_00" / "model_optim_rng.pt"
    sd = torch.load(shard, weights_only=False)
    lm = sd["model"]["language_model"]
    lm["decoder_stack"] = lm.pop("encoder")
    torch.save(sd, shard)
    with pytest.raises(MegatronFormatError, match="unknown layout: .*'decoder_stack'"):
        convert(ckpt, tmp_path / "hf")


class Payload:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_a_foreign_global_is_refused_and_runs_nothing(source, tmp_path):
    ckpt = write_checkpoint(source, tmp_path / "ckpt")
    shard = ckpt / "release" / "mp_rank_00" / "model_optim_rng.pt"
    sd = torch.load(shard, weights_only=False)
    payload = Payload()
    payload.marker = tmp_path / "pwned"
    sd["args"].evil = payload
    torch.save(sd, shard)
    with pytest.raises(MegatronFormatError, match=r"refusing to unpickle global '(posix|os)\."):
        convert(ckpt, tmp_path / "hf")
    assert not payload.marker.exists()


def test_serve_refuses_a_broken_checkpoint_and_exits(source, tmp_path):
    ckpt = write_checkpoint(source, tmp_path / "ckpt", tp=2)
    shutil.rmtree(ckpt / "release" / "mp_rank_01")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "arbridge.cli", "serve", "--model", str(ckpt),
                           "--port", "0"], capture_output=True, text=True, timeout=120, env=env,
                          cwd=REPO)
    assert proc.returncode != 0
    assert "missing shard" in proc.stderr and "mp_rank_01" in proc.stderr
    assert "SERVING" not in proc.stderr.replace("NOT_SERVING", "")
    assert not list((tmp_path / "cache").rglob("config.json"))  # no half conversion cached


# -- through the server and the CLI ----------------------------------------------------
@pytest.mark.parametrize("name", LAYOUTS)
async def test_greedy_generation_through_the_server_matches(source, tmp_path, name):
    model, tok_dir = source
    layout = LAYOUTS[name]
    heads = {} if layout.get("with_args", True) else {"megatron_num_attention_heads": 4}
    ckpt = write_checkpoint(source, tmp_path / "ckpt", **layout)
    hf_dir = tmp_path / "reference"
    model.save_pretrained(hf_dir)
    shutil.copy(ckpt / "vocab.json", hf_dir)
    shutil.copy(ckpt / "merges.txt", hf_dir)
    # The reference serves the source model with the same GPT-2 tokenizer files.
    from arbridge.models.megatron import build_tokenizer
    build_tokenizer(tok_dir).save_pretrained(hf_dir)

    texts = []
    for path in (hf_dir, ckpt):
        running = await start_server(path, tmp_path / "cache", **heads)
        try:
            request = spb.GenerateRequest(prompt="The red chair",
                                          sampling=pb.SamplingParams(max_new_tokens=24))
            _, done, _ = await collect(running.stub.Generate(request))
            info = await running.stub.GetModelInfo(spb.GetModelInfoRequest())
            texts.append((done[0].text, done[0].usage.completion_tokens, info.source_format))
        finally:
            await running.close()
    assert texts[0][:2] == texts[1][:2]
    assert texts[0][1] > 0
    assert [t[2] for t in texts] == ["hf", "megatron"]


def test_convert_cli(source, tmp_path):
    ckpt = write_checkpoint(source, tmp_path / "ckpt", tp=2, version=3.0)
    out = tmp_path / "converted"
    subprocess.run([sys.executable, "-m", "arbridge.cli", "convert", str(ckpt), str(out)],
                   check=True, capture_output=True, timeout=120, cwd=REPO)
    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert_same_logits(source[0], converted)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
