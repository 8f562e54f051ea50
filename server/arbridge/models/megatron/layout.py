"""Where a Megatron checkpoint's files are, and which format they are in.

Megatron-LM's `--save` folder:

    CKPT/latest_checkpointed_iteration.txt     "release" or an iteration number
    CKPT/release/ or CKPT/iter_0001000/        one checkpoint:
        metadata.json + .metadata + *.distcp + common.pt    --ckpt-format torch_dist
        .metadata + *.distcp                                --ckpt-format fsdp_dtensor
        mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt           --ckpt-format torch (legacy;
                                                            EEE: expert-parallel rank)

or NVIDIA's released zip (member release/mp_rank_00/model_optim_rng.pt). An
iteration folder itself, or a folder holding `mp_rank_*` directly, works too.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from pathlib import Path

from arbridge.models.megatron.pickles import MegatronFormatError

SHARD_FILES = ("model_optim_rng.pt", "model_rng.pt")
SHARD_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?(?:_(\d{3}))?$")
TRACKER = "latest_checkpointed_iteration.txt"


def is_dist_checkpoint(folder: Path) -> bool:
    return (folder / "metadata.json").is_file() or (folder / ".metadata").is_file()


def is_megatron_checkpoint(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".zip" and zip_shard_members(path) != []
    if not path.is_dir():
        return False
    if (path / TRACKER).exists() or (path / "release").is_dir() or is_dist_checkpoint(path):
        return True
    if any(p.is_dir() and p.name.startswith("iter_") for p in path.iterdir()):
        return True
    return any(SHARD_DIR.match(p.name) for p in path.iterdir() if p.is_dir())


def zip_shard_members(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return [n for n in zf.namelist()
                if n.rsplit("/", 1)[-1] in SHARD_FILES
                and SHARD_DIR.match(n.rstrip("/").split("/")[-2] if "/" in n else "")]


def extract_zip(path: Path, into: Path) -> Path:
    """NVIDIA's zip -> the extracted folder holding mp_rank_XX."""
    members = zip_shard_members(path)
    if not members:
        raise MegatronFormatError(f"{path}: no mp_rank_XX/model_optim_rng.pt member")
    with zipfile.ZipFile(path) as zf:
        for name in members:
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    return (into / members[0]).parent.parent


def iteration_dir(root: Path) -> Path:
    """The folder holding one checkpoint (mp_rank_* shards or torch_dist files)."""
    tracker = root / TRACKER
    if tracker.exists():
        value = tracker.read_text().strip()
        try:
            folder = root / ("release" if value == "release" else f"iter_{int(value):07d}")
        except ValueError:
            raise MegatronFormatError(f"{tracker} holds '{value}', neither 'release' nor an "
                                      "iteration number") from None
        if not folder.is_dir():
            raise MegatronFormatError(f"{tracker} names '{value}' but {folder} does not exist")
        return folder
    if (root / "release").is_dir():
        return root / "release"
    iters = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("iter_"))
    if iters:
        return iters[-1]
    return root


def checkpoint_format(folder: Path) -> str:
    """'torch_dist', 'fsdp_dtensor' (plain torch.distributed.checkpoint: `.metadata` and
    *.distcp only) or 'torch' (legacy per-rank pickles); refuses the others by name."""
    if not is_dist_checkpoint(folder):
        return "torch"
    if (folder / ".metadata").is_file() and not (folder / "metadata.json").exists() \
            and not (folder / "common.pt").exists():
        return "fsdp_dtensor"
    meta = folder / "metadata.json"
    if not meta.is_file():
        raise MegatronFormatError(f"missing file: {meta} (a torch_dist checkpoint has "
                                  "metadata.json, .metadata, *.distcp and common.pt)")
    try:
        backend = json.loads(meta.read_text()).get("sharded_backend")
    except (ValueError, AttributeError):
        raise MegatronFormatError(f"{meta} is not Megatron's dist-checkpoint metadata "
                                  "(not a JSON object)") from None
    if backend != "torch_dist":
        raise MegatronFormatError(
            f"{meta}: sharded_backend '{backend}' is not supported (only torch_dist; "
            "convert zarr checkpoints with Megatron-LM's tools/checkpoint first)")
    return "torch_dist"


def find_shards(folder: Path, expert_parallel: bool = False) -> dict[tuple[int, int, int], Path]:
    """{(tensor rank, pipeline stage, expert rank): shard file}, checked to be a full grid.

    Megatron-LM names a shard `mp_rank_TT`, then `_PPP` when pipelined, then `_EEE` when
    expert-parallel, so `mp_rank_00_001` is pipeline stage 1, or expert rank 1 of an
    unpipelined model: `expert_parallel` (from the checkpoint's args) says which."""
    shards: dict[tuple[int, int, int], Path] = {}
    for sub in sorted(folder.iterdir()):
        m = SHARD_DIR.match(sub.name)
        if not (sub.is_dir() and m):
            continue
        files = [sub / f for f in SHARD_FILES if (sub / f).exists()]
        if not files:
            raise MegatronFormatError(f"missing shard: {sub} has none of {', '.join(SHARD_FILES)}")
        t, a, b = (int(g) if g else None for g in m.groups())
        if b is not None:
            key = (t, a, b)
        elif a is not None and expert_parallel:
            key = (t, 0, a)
        else:
            key = (t, a or 0, 0)
        shards[key] = files[0]
    if not shards:
        raise MegatronFormatError(f"unknown layout: no mp_rank_XX folders and no torch_dist "
                                  f"files in {folder}")
    grid = [max(key[i] for key in shards) + 1 for i in range(3)]
    for t in range(grid[0]):
        for p in range(grid[1]):
            for e in range(grid[2]):
                if (t, p, e) not in shards:
                    raise MegatronFormatError(
                        f"missing shard: {folder / shard_name(t, p, e, grid[1] > 1, grid[2] > 1)} "
                        f"(expected a {grid[0]} x {grid[1]} x {grid[2]} tensor x pipeline x "
                        "expert grid)")
    return shards


def shard_name(t: int, p: int, e: int, piped: bool, experts: bool) -> str:
    """Megatron-LM's `get_checkpoint_name` folder for these ranks."""
    return f"mp_rank_{t:02d}" + (f"_{p:03d}" if piped else "") + (f"_{e:03d}" if experts else "")


def check_declared_grid(args, shards: dict[tuple[int, int, int], Path]) -> None:
    """The shards on disk must be the grid the checkpoint's args say trained it."""
    tp, pp, ep = (max(key[i] for key in shards) + 1 for i in range(3))
    declared = (getattr(args, "tensor_model_parallel_size", None) or tp,
                getattr(args, "pipeline_model_parallel_size", None) or pp,
                getattr(args, "expert_model_parallel_size", None) or ep)
    if declared != (tp, pp, ep):
        folder = shards[(0, 0, 0)].parent.parent
        absent = [shard_name(t, p, e, declared[1] > 1, declared[2] > 1)
                  for t in range(declared[0]) for p in range(declared[1])
                  for e in range(declared[2]) if (t, p, e) not in shards]
        experts = f" x {declared[2]} expert" if max(declared[2], ep) > 1 else ""
        held = f" x {ep}" if experts else ""
        raise MegatronFormatError(
            f"missing shard: {', '.join(absent) or 'none'} in {folder}: the checkpoint's args "
            f"say {declared[0]} tensor x {declared[1]} pipeline{experts} ranks, the folder "
            f"holds {tp} x {pp}{held}")


def fingerprint(source: Path) -> str:
    """Changes whenever a checkpoint file changes (for the conversion cache)."""
    h = hashlib.sha256(str(source.resolve()).encode())
    files = [source] if source.is_file() else sorted(
        p for p in source.rglob("*") if p.is_file() and (
            p.name in SHARD_FILES or p.name in (".metadata", "common.pt")
            or p.suffix in (".txt", ".json", ".distcp", ".model")))
    for p in files:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
