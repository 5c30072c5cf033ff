#!/bin/sh
# install-deps.sh: installs what qmoe needs to build and test (Debian 12); non-interactive, idempotent.
# The CUDA toolkit is optional and not installed here (set CUDA_PATH if yours is not /usr/local/cuda).
set -eu
PKGS="build-essential ninja-build pkg-config lua5.4 liblua5.4-dev libyaml-dev libshaderc-dev glslc spirv-tools
      libvulkan-dev mesa-vulkan-drivers vulkan-validationlayers clang libclang-rt-14-dev python3 python3-pip"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "install-deps: installing:$missing"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
else
  echo "install-deps: Debian packages already present"
fi
# Python: llama.cpp's own GGUF reader (gguf-py) and Hugging Face's tokenizers are the independent
# references the tests compare with.
PY=${PYTHON:-python3}
if ! $PY -c 'import gguf, numpy, tokenizers' 2>/dev/null; then
  $PY -m pip install -q --disable-pip-version-check "gguf==0.19.0" "numpy>=1.24" "tokenizers==0.23.3" ||
    $PY -m pip install -q --disable-pip-version-check --break-system-packages "gguf==0.19.0" "numpy>=1.24" "tokenizers==0.23.3"
fi
echo "install-deps: done"
