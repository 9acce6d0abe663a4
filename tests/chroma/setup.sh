#!/usr/bin/env bash
# Builds (once) and caches the Chroma server the integration tests talk to
# (tests/chroma.rs through the harness's `chroma` module): a Python virtual
# environment with `chromadb` from PyPI, whose `chroma run` serves the v2 REST
# API that src/kb/chroma.rs speaks.
#
# Usage: setup.sh            (as root on a fresh Debian bookworm machine)
#   The cache is $MACHA_CHROMA_CACHE, by default /var/cache/macha-testbed/chroma-v$VERSION.
#   The last line on stdout is that folder; progress goes to stderr:
#     dir=$(bash tests/chroma/setup.sh | tail -n 1)
#     "$dir/venv/bin/chroma" run --path DATA --host 127.0.0.1 --port 8000
# A cached call only tests a stamp file and exits. The first build downloads
# and installs about 80 wheels (about 40 s, 520 MB).
#
# Chroma's "default embedding function" (client-side Python, onnxruntime)
# downloads a model when used; nothing here or in the tests uses it: macha
# always sends its own embeddings, and the server never computes any.
set -euo pipefail

# Bump whenever the recipe below changes: a new version builds a new folder,
# so a stale environment is never reused.
VERSION=1

# Pinned, chromadb and everything it pulls in (as `pip freeze` listed them
# after installing chromadb 1.5.9), so that every machine runs the same
# server; an unpinned dependency could change under the tests.
CHROMADB=chromadb==1.5.9
DEPENDENCIES=(
    aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiohttp-retry==2.9.1 aiosignal==1.4.0
    annotated-doc==0.0.7 annotated-types==0.8.0 anyio==4.16.0 attrs==26.1.0 bcrypt==5.0.0
    build==1.6.1 certifi==2026.10.19.post1 charset-normalizer==3.5.3 click==8.5.1
    durationpy==0.12 filelock==4.3.2 flatbuffers==25.12.19 frozenlist==1.8.0
    fsspec==2026.9.0 googleapis-common-protos==1.76.0 grpcio==1.85.4 h11==0.16.0
    hf-xet==1.8.0 httpcore==1.0.9 httpcore2==2.17.0 httptools==0.9.0 httpx==0.29.0
    httpx2==2.17.0 huggingface_hub==2.4.0 idna==3.21 importlib_resources==7.1.0
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 kubernetes==37.0.3
    markdown-it-py==4.3.0 mdurl==0.1.2 mmh3==5.3.1 multidict==7.2.1 numpy==2.4.6
    oauthlib==4.0.1 onnxruntime==1.32.0 opentelemetry-api==1.45.2
    opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-exporter-otlp-proto-common==1.45.2
    opentelemetry-exporter-otlp-proto-grpc==1.45.2 opentelemetry-proto==1.45.2
    opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 orjson==3.13.0
    overrides==7.7.0 packaging==26.4 propcache==0.5.4 protobuf==7.36.2 pybase64==1.5.1
    pydantic==2.14.4 pydantic-settings==2.16.3 pydantic_core==2.50.5 Pygments==2.21.0
    PyPika==0.51.1 pyproject_hooks==1.3.3 python-dateutil==4.0.0 python-dotenv==1.2.4
    PyYAML==6.0.4 referencing==0.37.0 requests==2.34.2 requests-oauthlib==2.0.0
    rich==15.0.0 rpds-py==2026.9.1 shellingham==1.5.4 tenacity==9.2.1 tokenizers==0.23.3
    tqdm==4.70.1 truststore==0.10.5 typer==0.29.2 typing-inspection==0.4.5
    typing_extensions==4.16.0 tzdata==2026.6 urllib3==2.8.0 uvicorn==0.55.0 uvloop==0.23.0
    watchfiles==1.3.0 websocket-client==1.9.2 websockets==17.4 yarl==1.25.1
)

DIR=${MACHA_CHROMA_CACHE:-/var/cache/macha-testbed/chroma-v$VERSION}
DIR=${DIR%/}
STAMP=$DIR/.macha-chroma-stamp

NAME=chroma/setup.sh
CACHE_VAR=MACHA_CHROMA_CACHE
# shellcheck source=tests/cache.sh
. "$(dirname "${BASH_SOURCE[0]}")/../cache.sh"
cache_fast_path

cache_python
cache_begin

start=$(date +%s)
say "building into $TMP"

python3 -m venv "$TMP/venv"
py=$TMP/venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$py" -m pip install -q "$CHROMADB" "${DEPENDENCIES[@]}" >&2

# The console scripts' #! lines name the temporary folder; they are pointed
# at the final one, so that "$DIR/venv/bin/chroma" works after the rename.
# (The environment itself finds itself from the path of its python.)
for script in "$TMP"/venv/bin/*; do
    if [ -f "$script" ] && [ "$(head -c 2 "$script")" = '#!' ] \
        && head -n 1 "$script" | grep -qxF "#!$TMP/venv/bin/python"; then
        sed -i "1s|^#!$TMP/venv/bin/python\$|#!$DIR/venv/bin/python|" "$script"
    fi
done

# Smoke test: the server starts here and answers its heartbeat (a wheel
# that does not fit this machine shows now, not in the middle of a test).
say "checking that chroma run answers"
"$py" - "$TMP" >&2 <<'PY'
import os, socket, subprocess, sys, tempfile, time, urllib.request
venv = os.path.join(sys.argv[1], "venv")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
with tempfile.TemporaryDirectory() as data:
    env = dict(os.environ, ANONYMIZED_TELEMETRY="False")
    server = subprocess.Popen(
        [os.path.join(venv, "bin/python"), "-c", "from chromadb.cli.cli import app; app()",
         "run", "--path", data, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/version", timeout=2) as r:
                    print("chroma/setup.sh: chroma run answers, version", r.read().decode())
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("chroma/setup.sh: chroma run did not answer within 60 s")
                time.sleep(0.2)
    finally:
        server.kill()
        server.wait()
PY

end=$(date +%s)
{
    echo "version=$VERSION"
    echo "chromadb=${CHROMADB#*==}"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "total_seconds=$((end - start))"
} >"$TMP/.macha-chroma-stamp"
cache_finish
say "done in $((end - start)) s"
echo "$DIR"
