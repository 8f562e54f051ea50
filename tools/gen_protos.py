"""Generate the Python code for protos/ (messages, type stubs, gRPC stubs).

Usage: python tools/gen_protos.py OUT_ROOT

The proto package arbridge.v1 lands in OUT_ROOT/arbridge/v1/, so with
OUT_ROOT=server the generated modules are importable as ``arbridge.v1`` and
their own cross-imports (``from arbridge.v1 import types_pb2``) resolve.
Never edit the output by hand: `make protos` rewrites it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
GENERATED_INIT = '"""Generated from protos/arbridge/v1 by `make protos`. Do not edit."""\n'


def generate(out_root: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    out_root.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package_dir = out_root / "arbridge" / "v1"
    (package_dir / "__init__.py").write_text(GENERATED_INIT)
    return sorted(p for p in package_dir.iterdir() if p.is_file())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    for path in generate(Path(sys.argv[1])):
        print(path)
