#!/usr/bin/env bash
# Create .venv in the repository root and install everything fec-mm needs.
# Idempotent: nothing is installed when the environment is up to date.
#
# Which mmcv (MMCV=lite|full, e.g. `make setup MMCV=full`):
#   lite  mmcv-lite 2.1.0 (PyPI wheel, pure Python) plus fec-mm-mmcv-ops
#         (mmcv_lite_ops/: the mmcv._ext that provides nms and RoIAlign from
#         torchvision's compiled kernels and sigmoid focal loss in PyTorch).
#         No compiler; what every shipped config needs.
#   full  mmcv 2.1.0 built from source with all its ops (deformable
#         convolution, CARAFE, ...): 11-33 min on 2 cores, once; the wheel is
#         cached in ~/.cache/fec-mm/mmcv-2.1.0-torch-2.11.0/.
#   unset keep the mmcv .venv has (a compiled mmcv stays), lite for a new one.
#
# Extras (EXTRAS=name[,name], e.g. `make setup EXTRAS=tools`): also install
# requirements/<name>.txt, pinned so that nothing of the stack moves.
# `make test` installs both (their tests use them).
#   tools    what the libraries' packaged tools need (psutil, seaborn,
#            grad-cam, openmim).
#   browser  Playwright, and, when run as root with apt-get, Debian's chromium
#            (the cluster explorer's browser tests; without root they skip).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
TORCH=2.11.0
TORCHVISION=0.26.0
MMCV_VERSION=2.1.0
# The built mmcv wheel is cached per torch version: pip's own wheel cache
# would hand it back for any torch and mmcv._ext would fail to load.
MMCV_CACHE="${FEC_MM_WHEEL_CACHE:-$HOME/.cache/fec-mm}/mmcv-$MMCV_VERSION-torch-$TORCH"

log() { echo "[setup_env] $*"; }

if [ ! -x "$PY" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# Debian's chromium for the browser extra: a system package, so checked on
# every run (outside the stamp); installed only as root.
install_chromium() {
  case ",${EXTRAS:-}," in *,browser,*) ;; *) return 0 ;; esac
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      log "installing Debian's chromium for the browser tests (apt-get)"
      DEBIAN_FRONTEND=noninteractive apt-get update -q
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
    else
      log "no /usr/bin/chromium and not root: the browser tests will be skipped" \
          "(sudo apt-get install chromium to run them)"
    fi
  fi
}

# Prints full, lite or none: the mmcv $MMCV_VERSION that .venv has working
# (full: the compiled mmcv._ext; lite: mmcv-lite with fec-mm-mmcv-ops's).
# With the argument "all", none also when the rest of the stack fails to import.
mmcv_kind() {
  "$PY" - "$MMCV_VERSION" "$@" <<'EOF' 2>/dev/null || echo none
import importlib.machinery
import os
import sys

import mmcv
import mmcv._ext

path = mmcv._ext.__file__
if mmcv.__version__ != sys.argv[1]:
    kind = 'none'
elif path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
    kind = 'full'
else:
    from importlib.metadata import distribution
    ours = distribution('fec-mm-mmcv-ops').locate_file('mmcv/_ext.py')
    kind = 'lite' if os.path.samefile(ours, path) else 'none'
if sys.argv[2:] == ['all']:
    import fec_mm, mmcv.ops, mmdet.models, mmpretrain.models, mmseg.models  # noqa
print(kind)
EOF
}

# One Python start when all is well: the stack imports and says its mmcv.
HAVE=$(mmcv_kind all)
if [ "$HAVE" = none ]; then
  HAVE=$(mmcv_kind)
  STACK_OK=0
else
  STACK_OK=1
fi
WANT="${MMCV:-}"
if [ -z "$WANT" ]; then
  if [ "$HAVE" = full ]; then WANT=full; else WANT=lite; fi
fi
case "$WANT" in
  lite|full) ;;
  *) log "MMCV must be lite or full, not '$WANT'"; exit 2 ;;
esac
EXTRAS="${EXTRAS:-}"
EXTRA_FILES=()
for extra in ${EXTRAS//,/ }; do
  if [ ! -f "requirements/$extra.txt" ]; then
    log "EXTRAS: unknown extra '$extra' (no requirements/$extra.txt; known: $(ls requirements | sed 's/\.txt$//' | tr '\n' ' '))"
    exit 2
  fi
  EXTRA_FILES+=("requirements/$extra.txt")
done

# Stamp: skip everything when requirements, set-up files and the mmcv kind
# have not changed and the environment still imports.
STAMP="$VENV/.fec_mm_setup_stamp"
HASH=$({ echo "mmcv=$WANT extras=$EXTRAS"
         cat requirements.txt requirements-docs.txt setup.py pyproject.toml tools/setup_env.sh
         [ ${#EXTRA_FILES[@]} -eq 0 ] || cat "${EXTRA_FILES[@]}"
         cat mmcv_lite_ops/pyproject.toml mmcv_lite_ops/mmcv/_ext.py
         cat fec_mm/ops/csrc/* 2>/dev/null || true; } | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && [ "$HAVE" = "$WANT" ] \
   && [ "$STACK_OK" = 1 ]; then
  log "environment up to date (mmcv: $WANT)"
  install_chromium
  exit 0
fi

"${PIP[@]}" "setuptools<70" wheel ninja "numpy<2"
if ! "$PY" -c "import torch, torchvision, sys; sys.exit(not (torch.__version__.startswith('$TORCH') and torchvision.__version__.startswith('$TORCHVISION')))" 2>/dev/null; then
  log "installing torch $TORCH, torchvision $TORCHVISION"
  "${PIP[@]}" "torch==$TORCH" "torchvision==$TORCHVISION"
fi

log "installing pinned requirements"
# Constrain torch so that no dependency swaps it for another build.
"${PIP[@]}" -r requirements.txt -c <(printf 'torch==%s\ntorchvision==%s\n' "$TORCH" "$TORCHVISION")
log "installing the docs build's pinned requirements (make docs)"
"${PIP[@]}" -r requirements-docs.txt -c <(printf 'torch==%s\ntorchvision==%s\n' "$TORCH" "$TORCHVISION")

for file in "${EXTRA_FILES[@]}"; do
  log "installing extra $file"
  "${PIP[@]}" -r "$file" -c <(printf 'torch==%s\ntorchvision==%s\nnumpy<2\n' "$TORCH" "$TORCHVISION")
done

installed() { "$PY" -m pip show -q "$1" >/dev/null 2>&1; }
if [ "$HAVE" != "$WANT" ]; then
  # mmcv and mmcv-lite own the same files: never keep both.
  for dist in fec-mm-mmcv-ops mmcv-lite mmcv; do
    if installed "$dist"; then
      log "removing $dist"
      "$PY" -m pip uninstall -y -q "$dist"
    fi
  done
  if [ "$WANT" = full ]; then
    if ! ls "$MMCV_CACHE"/mmcv-*.whl >/dev/null 2>&1; then
      log "building mmcv $MMCV_VERSION with ops against torch $TORCH (11-33 minutes on 2 cores)"
      mkdir -p "$MMCV_CACHE"
      MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" "$PY" -m pip wheel --no-build-isolation \
        --no-deps --no-cache-dir -w "$MMCV_CACHE" "mmcv==$MMCV_VERSION"
    fi
    log "installing mmcv $MMCV_VERSION (compiled, all ops) from $MMCV_CACHE"
    "${PIP[@]}" --no-deps "$MMCV_CACHE"/mmcv-*.whl
  else
    log "installing mmcv-lite $MMCV_VERSION and fec-mm-mmcv-ops (nms, RoIAlign from torchvision)"
    "${PIP[@]}" "mmcv-lite==$MMCV_VERSION"
  fi
fi
if [ "$WANT" = lite ]; then
  # Reinstalled on every change of mmcv_lite_ops/ (it is in the stamp's hash).
  "${PIP[@]}" --no-build-isolation --no-deps --force-reinstall ./mmcv_lite_ops
fi

log "installing fec_mm (editable, with the CPU clustering kernels)"
"${PIP[@]}" --no-build-isolation --no-deps -e .

HAVE=$(mmcv_kind all)
if [ "$HAVE" != "$WANT" ]; then
  "$PY" -c "import fec_mm, mmcv.ops, mmdet.models, mmpretrain.models, mmseg.models"
  log "expected mmcv '$WANT' in $VENV, found '$HAVE'"
  exit 1
fi
echo "$HASH" > "$STAMP"
install_chromium
log "done (mmcv: $WANT)"
