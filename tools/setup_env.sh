#!/usr/bin/env bash
# Create .venv in the repository root and install everything fec-mm needs.
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
TORCH=2.11.0
TORCHVISION=0.26.0
MMCV=2.1.0
# The built mmcv wheel is cached per torch version: pip's own wheel cache
# would hand it back for any torch and mmcv._ext would fail to load.
MMCV_CACHE="${FEC_MM_WHEEL_CACHE:-$HOME/.cache/fec-mm}/mmcv-$MMCV-torch-$TORCH"

log() { echo "[setup_env] $*"; }

if [ ! -x "$PY" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# Stamp: skip everything when requirements and setup files have not changed
# and the environment still imports.
STAMP="$VENV/.fec_mm_setup_stamp"
HASH=$({ cat requirements.txt setup.py pyproject.toml tools/setup_env.sh
          cat fec_mm/ops/csrc/* 2>/dev/null || true; } | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] \
   && "$PY" -c "import mmcv._ext, mmdet, mmseg, mmpretrain.models, fec_mm" 2>/dev/null; then
  log "environment up to date"
  exit 0
fi

"${PIP[@]}" "setuptools<70" wheel ninja "numpy<2"
if ! "$PY" -c "import torch, torchvision, sys; sys.exit(not (torch.__version__.startswith('$TORCH') and torchvision.__version__.startswith('$TORCHVISION')))" 2>/dev/null; then
  log "installing torch $TORCH, torchvision $TORCHVISION"
  "${PIP[@]}" "torch==$TORCH" "torchvision==$TORCHVISION"
fi

if ! "$PY" -c "import mmcv, mmcv._ext, sys; sys.exit(mmcv.__version__ != '$MMCV')" 2>/dev/null; then
  if ! ls "$MMCV_CACHE"/mmcv-*.whl >/dev/null 2>&1; then
    log "building mmcv $MMCV with ops against torch $TORCH (about 11 minutes on 2 cores)"
    mkdir -p "$MMCV_CACHE"
    MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" "$PY" -m pip wheel --no-build-isolation \
      --no-deps --no-cache-dir -w "$MMCV_CACHE" "mmcv==$MMCV"
  fi
  "${PIP[@]}" --no-deps --force-reinstall "$MMCV_CACHE"/mmcv-*.whl
fi

log "installing pinned requirements"
# Constrain torch so that no dependency swaps it for another build.
"${PIP[@]}" -r requirements.txt -c <(printf 'torch==%s\ntorchvision==%s\n' "$TORCH" "$TORCHVISION")

log "installing fec_mm (editable, with the CPU clustering kernels)"
"${PIP[@]}" --no-build-isolation --no-deps -e .

"$PY" -c "import mmcv._ext, mmdet, mmseg, mmpretrain.models, fec_mm"
echo "$HASH" > "$STAMP"
log "done"
