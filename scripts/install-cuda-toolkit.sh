#!/usr/bin/env bash
# Installs nvcc for building SigmaForge with `--features cuda` on a Debian 12 (bookworm) machine
# without a GPU: Debian's non-free `nvidia-cuda-toolkit` (CUDA 11.8), enough to compile candle's
# kernels to PTX. Machines with the NVIDIA toolkit already installed (nvcc on PATH) are left alone.
# Needs root (or sudo) and Debian's package mirror.
set -euo pipefail

if command -v nvcc >/dev/null 2>&1; then
    echo "nvcc already installed: $(nvcc --version | tail -n 1)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# The toolkit lives in Debian's non-free component, which default images leave out.
LIST=/etc/apt/sources.list.d/sigmaforge-nonfree.sources
if [ ! -f "$LIST" ]; then
    $SUDO tee "$LIST" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: non-free non-free-firmware contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends nvidia-cuda-toolkit
nvcc --version | tail -n 1
