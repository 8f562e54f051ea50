#!/usr/bin/env bash
# Client-side C# toolchain from Debian sources, for `make unity-stubs` and the
# C# tests (no dotnet or NuGet on these machines):
#   OUT/grpc_csharp_plugin      gRPC's official C# generator (Debian builds grpc
#                               without it; we compile it from grpc's source package)
#   OUT/Google.Protobuf.dll     Google.Protobuf from protobuf's source package, by mcs
#   OUT/System.Runtime.CompilerServices.Unsafe.dll   the IL shim it needs under mono
# Needs: deb-src for bookworm (make debian-sources), libprotoc-dev, mono-devel.
set -euo pipefail
OUT=${1:?usage: build_toolchain.sh OUT_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT/src"
OUT=$(cd "$OUT" && pwd)
cd "$OUT/src"

if ! ls grpc_*.orig.tar.gz >/dev/null 2>&1 || ! ls protobuf_*.orig.tar.gz >/dev/null 2>&1; then
  apt-get source --download-only grpc protobuf 2>&1 | grep -v "^W: Download is performed unsandboxed" || true
fi
GRPC_TAR=$(echo grpc_*.orig.tar.gz)        # grpc_1.51.1.orig.tar.gz -> grpc-1.51.1/
PB_TAR=$(echo protobuf_*.orig.tar.gz)
GRPC_DIR=$(basename "$GRPC_TAR" .orig.tar.gz | tr _ -)
PB_DIR=$(basename "$PB_TAR" .orig.tar.gz | tr _ -)

# 1. grpc_csharp_plugin (two source files; about 3 s).
rm -rf "$GRPC_DIR"
tar xzf "$GRPC_TAR" --wildcards "$GRPC_DIR/src/compiler/*" \
  "$GRPC_DIR/include/grpcpp/impl/codegen/config_protobuf.h"
(cd "$GRPC_DIR" && g++ -std=c++17 -O1 -I. -Iinclude src/compiler/csharp_plugin.cc \
  src/compiler/csharp_generator.cc -lprotoc -lprotobuf -o "$OUT/grpc_csharp_plugin")

# 2. The Unsafe shim, then Google.Protobuf with mcs (C# 7.2, as Unity's oldest
# supported compilers). mcs trips on `using static` of a nested type in two
# files: an alias for the one type they use says the same thing.
ilasm -dll -quiet -output:"$OUT/System.Runtime.CompilerServices.Unsafe.dll" "$HERE/Unsafe.il"
rm -rf "$PB_DIR"
tar xzf "$PB_TAR" --wildcards "$PB_DIR/csharp/src/Google.Protobuf/*"
SRC="$PB_DIR/csharp/src/Google.Protobuf"
for f in Reflection/DescriptorDeclaration.cs Reflection/FileDescriptor.cs; do
  sed -i 's/^using static Google.Protobuf.Reflection.SourceCodeInfo.Types;/using Location = Google.Protobuf.Reflection.SourceCodeInfo.Types.Location;/' "$SRC/$f"
done
(cd "$SRC" && find . -name '*.cs' -not -path './Properties/*' -print0 | sort -z |
  xargs -0 mcs -langversion:7.2 -unsafe -target:library -nowarn:1591,0618,0612,0436,0219 \
    -r:"$OUT/System.Runtime.CompilerServices.Unsafe.dll" -r:System.Numerics \
    -out:"$OUT/Google.Protobuf.dll" >/dev/null)
echo "C# toolchain in $OUT: grpc_csharp_plugin, Google.Protobuf.dll"
