#!/usr/bin/env bash
# Builds SigmaForge: the host binary and every WebAssembly plugin, into dist/.
#
#   scripts/build.sh            # release host + wasm plugins -> dist/
#   scripts/build.sh --plugins  # only the plugins
#
# Outputs: dist/sigmaforge, dist/sigma.wasm, dist/search.wasm, dist/regex-task.wasm
# (and the test-only hostile, future, toy-task and toy-task-v010 plugins under dist/test/). Respects CARGO_TARGET_DIR.
# Installs the wasm32-wasip2 Rust target with rustup when it is missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
dist="$root/dist"
only_plugins=0
[[ "${1:-}" == "--plugins" ]] && only_plugins=1

# Wasm crates of the workspace: <package> <file stem in target> <name in dist>
plugins=(
  "sigma-plugin sigma_plugin sigma.wasm"
  "search-plugin search_plugin search.wasm"
  "regex-task regex_task regex-task.wasm"
)
test_plugins=(
  "hostile-plugin hostile_plugin hostile.wasm"
  "future-plugin future_plugin future.wasm"
  "toy-task-plugin toy_task_plugin toy-task.wasm"
  "toy-task-v010 toy_task_v010 toy-task-v010.wasm"
)

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "== installing the wasm32-wasip2 target (rustup)"
  rustup target add wasm32-wasip2
fi

mkdir -p "$dist" "$dist/test"

if [[ $only_plugins == 0 ]]; then
  echo "== host: cargo build --release -p sigmaforge"
  cargo build --release -p sigmaforge
  # Copy then rename: replacing the file in one step works while an older dist/sigmaforge runs.
  cp "$target_dir/release/sigmaforge" "$dist/.sigmaforge.new" && mv -f "$dist/.sigmaforge.new" "$dist/sigmaforge"
fi

# simd128 lets memchr/aho-corasick use their wasm SIMD paths (2x-4x on substring search);
# wasmtime enables SIMD by default, so it costs nothing at run time.
export CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="${CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS:--C target-feature=+simd128}"

build_wasm() {
  local out_dir="$1"; shift
  local pkgs=() entry pkg
  for entry in "$@"; do
    read -r pkg _ _ <<<"$entry"
    pkgs+=(-p "$pkg")
  done
  echo "== plugins: cargo build --profile wasm-release --target wasm32-wasip2 ${pkgs[*]}"
  cargo build --profile wasm-release --target wasm32-wasip2 "${pkgs[@]}"
  local stem name
  for entry in "$@"; do
    read -r pkg stem name <<<"$entry"
    cp "$target_dir/wasm32-wasip2/wasm-release/$stem.wasm" "$out_dir/$name"
    echo "   $out_dir/$name ($(stat -c %s "$out_dir/$name") bytes)"
  done
}

build_wasm "$dist" "${plugins[@]}"
build_wasm "$dist/test" "${test_plugins[@]}"
echo "== done: $dist"
