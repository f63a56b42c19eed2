# Sourced by the scripts (`. scripts/lib.sh` from the repository root): the one definition of the
# cache root, the pinned versions, Python venvs, Chromium, the shapes test packages and starting
# `blip-onnx serve` on loopback.

# The cache outside the checkout: ONNX Runtime, venvs, tools built from source.
blip_cache() {
  echo "${BLIP_ONNX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/blip-onnx}"
}

# What `cargo test` builds (scripts/test.sh, test-web.sh): the workspace but the ANN benchmark tool,
# which has no tests and whose hnsw_rs turns on libc features that change the build of nearly every
# crate, so the Python module built next (scripts/build-wheel.sh --test) could reuse none of them.
TEST_PACKAGES=(--workspace --exclude blip-bench-ann)

# The pinned version NAME from versions.env (an error when it is not there).
pinned() {
  local v
  v=$(sed -n "s/^$1=//p" "$(dirname "${BASH_SOURCE[0]}")/../versions.env" | head -n1)
  [ -n "$v" ] || { echo "versions.env has no $1" >&2; return 1; }
  echo "$v"
}

# A venv at DIR holding exactly the pip arguments given (requirement specs or `-r FILE`);
# (re)made when they change. Prints nothing; the caller uses DIR/bin/…
venv_with() {
  local dir=$1; shift
  local want="$*"
  for a in "$@"; do [ -f "$a" ] && want="$want $(sha256sum "$a" | cut -c1-16)"; done
  if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/.blip-installed" 2>/dev/null)" != "$want" ]; then
    fresh_venv "$dir" "$@"
    echo "$want" > "$dir/.blip-installed"
  fi
}

# `npm ci` in DIR, skipped while DIR/node_modules holds exactly its package-lock.json (a stamp
# holds the lock's hash): a second call in one test run costs nothing.
npm_ci_once() {
  local dir=$1 want
  want=$(sha256sum "$dir/package-lock.json" | cut -c1-16)
  if [ "$(cat "$dir/node_modules/.blip-installed" 2>/dev/null)" != "$want" ]; then
    (cd "$dir" && npm ci --silent --no-audit --no-fund >&2)
    echo "$want" > "$dir/node_modules/.blip-installed"
  fi
}

# A new venv at DIR (whatever was there is removed) holding the pip arguments given.
fresh_venv() {
  local dir=$1; shift
  rm -rf "$dir"
  python3 -m venv "$dir" >&2
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
}

# The venvs of the checks, made when missing or changed; each prints its folder.
onnx_checker_venv() {
  local venv
  venv="$(blip_cache)/onnx-checker-venv"
  venv_with "$venv" "onnx==$(pinned ONNX_VERSION)"
  echo "$venv"
}
portability_venv() {
  local venv
  venv="$(blip_cache)/portability-venv"
  venv_with "$venv" -r tools/portability/requirements.txt
  echo "$venv"
}

# What the Python tests install beside the wheel (scripts/python-test.sh): the whole suite's, or
# with --release only the task and console-script tests'.
PYTHON_TEST_REQS=(-r python/requirements-test.txt -r python/requirements-ray.txt -r python/requirements-clients.txt)
PYTHON_RELEASE_TEST_REQS=(-r python/requirements-test.txt)

# Debian's chromium (headless tests), installed when missing.
ensure_chromium() {
  command -v chromium >/dev/null && return 0
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >&2
}

# The three shapes packages (caption, retrieval, vqa) converted with BIN, printed as a folder.
# Converted once per test run: scripts/test.sh sets BLIP_SHAPES_PACKAGES to a folder every script
# shares; a script run alone converts into DIR.
shapes_packages() {
  local bin=$1 dir=${BLIP_SHAPES_PACKAGES:-$2}
  if [ ! -f "$dir/.converted" ]; then
    mkdir -p "$dir"
    for head in caption retrieval vqa; do
      "$bin" convert "fixtures/shapes/models/shapes-$head" -o "$dir/$head" --force >/dev/null
    done
    touch "$dir/.converted"
  fi
  echo "$dir"
}

# Starts `BIN serve ARGS…` on a free loopback port with its log at LOG, waits until it is ready,
# and sets SERVER_PID and SERVER_ADDR (host:port). Stop it with stop_server.
start_server() {
  local log=$1 bin=$2; shift 2
  BLIP_PORT=0 BLIP_HOST=127.0.0.1 "$bin" serve "$@" 2>"$log" &
  SERVER_PID=$!
  SERVER_ADDR=""
  for _ in $(seq 1 300); do
    SERVER_ADDR=$(sed -n 's|.*listening on http://||p' "$log" | head -n1)
    [ -n "$SERVER_ADDR" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$SERVER_ADDR" ] || { cat "$log" >&2; echo "the server did not start" >&2; return 1; }
  for _ in $(seq 1 300); do
    curl -sf "http://$SERVER_ADDR/health/ready" >/dev/null && return 0
    sleep 0.1
  done
  cat "$log" >&2; echo "the server at $SERVER_ADDR never became ready" >&2; return 1
}

stop_server() {
  if [ -n "${SERVER_PID:-}" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
