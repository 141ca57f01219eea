#!/usr/bin/env bash
# The prepared GPU check of fec-mm (issue 25, item 7): one script, one GPU,
# under 8 minutes, nothing but this repository and the pure-Python wheels it
# is given. Writes ONE Markdown report with the date, the GPU, the versions
# and every figure.
#
# Steps (each logs its command, runs under a time limit and the run goes on
# when it fails; the exit status is 1 if any step failed):
#   1. Triton kernel tests on CUDA (tests/test_ops_triton.py: float32 forward
#      and backward, float16 and bfloat16 inputs, opcheck, the tiny backbone);
#   2. backbones on ops_impl='triton' vs 'reference', forward and backward,
#      FEC-Small and ContextCluster-Small at 224² and 512², float32 and
#      float16/bfloat16 autocast (python -m fec_mm.gpu_checks backbone);
#   3. an AMP training step of configs/fec_maskrcnn.py on random data
#      (python -m fec_mm.gpu_checks amp-maskrcnn), when mmdet imports;
#   4. benchmark_ops.py --device cuda (ops and FEC-Small backbone, reference
#      vs triton) and benchmark_backbones.py --device cuda (FEC-Small/Base at
#      224², 512², 800x1344: images/s, peak memory).
# Steps 2-4 need mmengine and mmcv(-lite) (3 also mmdet); without them they
# are reported as skipped, saying why. Give their wheels with --wheels DIR:
# they are installed with `pip install --no-deps --no-index --target` into a
# temporary folder put on PYTHONPATH (nothing else on the machine changes),
# and mmcv-lite gets this repository's mmcv/_ext.py (mmcv_lite_ops/).
set -u

PROG=gpu_check.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT="gpu_check_report.md"
WHEELS=""
PY="${PYTHON:-python3}"
BUDGET=470
DRY_RUN=0

usage() {
    cat <<EOF
Usage: tools/analysis_tools/$PROG [--out FILE] [--wheels DIR] [--python PY]
                                  [--budget SECONDS] [--dry-run] [--help]

Runs fec-mm's GPU checks and writes one Markdown report.

  --out FILE         the report (default: $OUT in the current folder)
  --wheels DIR       wheels to install with pip --no-deps --no-index into a
                     temporary --target folder (mmengine, mmcv-lite, mmdet,
                     pytest and their pure-Python dependencies)
  --python PY        the Python to use (default: \$PYTHON or python3)
  --budget SECONDS   time for all steps together (default: $BUDGET); each step
                     gets at most its own limit and what is left
  --dry-run          print the steps and their commands, run nothing (no GPU
                     needed)
  -h, --help         this help

Exit status: 0 every step passed or was skipped, 1 a step failed, 2 bad usage.
EOF
}

die_usage() {
    echo "$PROG: error: $1 (see $PROG --help)" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1 ;;
        --out|--wheels|--python|--budget)
            [ $# -ge 2 ] && [ -n "$2" ] || die_usage "$1 needs a value"
            case "$1" in
                --out) OUT="$2" ;;
                --wheels) WHEELS="$2" ;;
                --python) PY="$2" ;;
                --budget) BUDGET="$2" ;;
            esac
            shift ;;
        *) die_usage "unknown option '$1'" ;;
    esac
    shift
done

case "$BUDGET" in
    ''|*[!0-9]*) die_usage "--budget must be a whole number of seconds, got '$BUDGET'" ;;
esac
[ "$BUDGET" -gt 0 ] || die_usage "--budget must be positive, got '$BUDGET'"
if [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then
    die_usage "--wheels: no such folder: $WHEELS"
fi
if [ "$DRY_RUN" -eq 0 ]; then
    OUT_DIR=$(dirname -- "$OUT")
    [ -d "$OUT_DIR" ] || die_usage "--out: the folder $OUT_DIR does not exist"
    command -v "$PY" >/dev/null 2>&1 || die_usage "--python: '$PY' not found"
    OUT=$(cd "$OUT_DIR" && pwd)/$(basename -- "$OUT")
fi

cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
FAILED=()
SKIPPED=()

if [ "$DRY_RUN" -eq 1 ]; then
    WORK="<temporary folder>"
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/fec_gpu_check.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
fi

report() {  # append lines (one per argument) to the report (not in a dry run)
    [ "$DRY_RUN" -eq 1 ] || printf '%s\n' "$@" >> "$OUT"
}

# run_step NAME LIMIT SKIP_RC REQUIRE CMD...: run CMD with a time limit (its
# own LIMIT and what is left of the budget), log its command, output and
# status. SKIP_RC: the exit status that means "could not run here" (0: none).
# REQUIRE: an extended regex the output must match for a pass ('': none).
run_step() {
    local name=$1 limit=$2 skip_rc=$3 require=$4
    shift 4
    local cmd
    cmd=$(printf '%q ' "$@")
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '[dry-run] %s (limit %ss): %s\n' "$name" "$limit" "$cmd"
        return 0
    fi
    local left=$((BUDGET - ($(date +%s) - START)))
    [ "$left" -lt "$limit" ] && limit=$left
    report "## $name" ""
    report '```bash' "$cmd" '```' ""
    if [ "$limit" -le 0 ]; then
        report "**FAILED**: not run, the time budget (${BUDGET} s) was used up." ""
        FAILED+=("$name (no time left)")
        echo "$name: not run (time budget used up)" >&2
        return
    fi
    echo ">>> $name: $cmd" >&2
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$WORK/step.log" 2>&1
    rc=$?
    local took=$(($(date +%s) - t0))
    report '```text'
    if [ -s "$WORK/step.log" ]; then
        # Every figure: the whole output of short steps, the end of long ones.
        if [ "$(wc -l < "$WORK/step.log")" -gt 400 ]; then
            report "[... first $(($(wc -l < "$WORK/step.log") - 400)) lines cut ...]"
            tail -n 400 "$WORK/step.log" >> "$OUT"
        else
            cat "$WORK/step.log" >> "$OUT"
        fi
    fi
    report '```' ""
    if [ "$rc" -eq 0 ] && [ -n "$require" ] && ! grep -Eq "$require" "$WORK/step.log"; then
        report "**FAILED** (${took} s): exit status 0, but the output lacks /$require/." ""
        FAILED+=("$name (output lacks /$require/)")
    elif [ "$rc" -eq 0 ]; then
        report "**passed** (${took} s)." ""
    elif [ "$skip_rc" -ne 0 ] && [ "$rc" -eq "$skip_rc" ]; then
        report "**skipped** (${took} s): see the output above for why." ""
        SKIPPED+=("$name")
    else
        local why="exit status $rc"
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why="stopped after its limit of ${limit} s"
        report "**FAILED** (${took} s): $why." ""
        FAILED+=("$name ($why)")
    fi
    echo "<<< $name: exit $rc, ${took} s" >&2
}

py_ok() {  # py_ok "import x": does it import here?
    "$PY" -c "$1" >/dev/null 2>&1
}

# --- wheels ---------------------------------------------------------------
if [ -n "$WHEELS" ]; then
    if [ "$DRY_RUN" -eq 1 ]; then
        echo "[dry-run] install: $PY -m pip install --no-deps --no-index --target $WORK/site $WHEELS/*.whl (+ mmcv_lite_ops/mmcv/_ext.py when mmcv has none)"
    else
        : > "$OUT"
        shopt -s nullglob
        wheels=("$WHEELS"/*.whl)
        shopt -u nullglob
        [ "${#wheels[@]}" -gt 0 ] || die_usage "--wheels: no .whl file in $WHEELS"
        if ! "$PY" -m pip install --quiet --no-deps --no-index --target "$WORK/site" \
                "${wheels[@]}" > "$WORK/pip.log" 2>&1; then
            echo "$PROG: pip could not install the wheels of $WHEELS:" >&2
            cat "$WORK/pip.log" >&2
            FAILED+=("installing the wheels")
        fi
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
        if [ -d "$WORK/site/mmcv" ] && [ ! -e "$WORK/site/mmcv/_ext.py" ] \
                && ! ls "$WORK/site/mmcv"/_ext*.so >/dev/null 2>&1; then
            cp "$REPO/mmcv_lite_ops/mmcv/_ext.py" "$WORK/site/mmcv/_ext.py"
        fi
    fi
fi

# --- header ---------------------------------------------------------------
if [ "$DRY_RUN" -eq 0 ]; then
    [ -n "$WHEELS" ] || : > "$OUT"
    COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "unknown (no .git)")
    report "# fec-mm GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')" ""
    report "Command: \`tools/analysis_tools/$PROG --budget $BUDGET${WHEELS:+ --wheels $WHEELS}\`, repository at $COMMIT." ""
    report '```text'
    "$PY" - >> "$OUT" 2>&1 <<'EOF'
import platform
import torch
print('python', platform.python_version(), '| torch', torch.__version__,
      '| CUDA', torch.version.cuda)
try:
    import triton
    print('triton', triton.__version__)
except ImportError as e:
    print('triton: not importable:', e)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f'GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, '
          f'{torch.cuda.device_count()} device(s)')
else:
    print('GPU: none (torch.cuda.is_available() is False)')
for name in ('mmengine', 'mmcv', 'mmdet', 'pytest'):
    try:
        module = __import__(name)
        print(name, getattr(module, '__version__', '?'))
    except Exception as e:  # the report says why a library is missing
        print(f'{name}: not importable ({type(e).__name__}: {e})')
EOF
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv,noheader >> "$OUT" 2>&1
    report '```' ""
    if ! py_ok 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        report "**No CUDA device**: nothing was checked." ""
        echo "$PROG: no CUDA device (torch.cuda.is_available() is False); report: $OUT" >&2
        exit 1
    fi
fi

HAVE_MODELS=1
py_ok 'import fec_mm.models' || HAVE_MODELS=0
[ "$DRY_RUN" -eq 1 ] && HAVE_MODELS=1

# --- 1. Triton kernel tests -----------------------------------------------
SELECT='not test_under_the_interpreter'
[ "$HAVE_MODELS" -eq 1 ] || SELECT="$SELECT and not test_backbone_matches_reference"
if [ "$DRY_RUN" -eq 0 ] && ! py_ok 'import pytest'; then
    report "## Triton kernel tests" "" "**FAILED**: pytest is not importable; give its wheels (pytest, pluggy, iniconfig, packaging) with --wheels." ""
    FAILED+=("Triton kernel tests (no pytest)")
else
    [ "$HAVE_MODELS" -eq 1 ] || report "(the tiny-backbone test is left out: fec_mm.models does not import without mmengine and mmcv)" ""
    run_step "Triton kernel tests (CUDA; float32, float16, bfloat16)" 100 0 ' passed' \
        "$PY" -m pytest -v -p no:cacheprovider tests/test_ops_triton.py -k "$SELECT"
fi

# --- 2. backbones: triton vs reference -------------------------------------
run_step "Backbones, triton vs reference (forward and backward)" 90 2 '' \
    "$PY" -m fec_mm.gpu_checks backbone --models FEC-Small CoC-Small --sizes 224 512 \
    --dtypes float32 float16 bfloat16

# --- 3. AMP training step of Mask R-CNN -------------------------------------
run_step "AMP training step, Mask R-CNN (configs/fec_maskrcnn.py, random data)" 70 2 '' \
    "$PY" -m fec_mm.gpu_checks amp-maskrcnn --config configs/fec_maskrcnn.py

# --- 4. benchmarks --------------------------------------------------------
if [ "$HAVE_MODELS" -eq 1 ]; then
    run_step "benchmark_ops.py --device cuda" 90 0 '' \
        "$PY" tools/analysis_tools/benchmark_ops.py --device cuda --settings cls seg det \
        --repeat 5 --backbone-repeat 3 --timeout 60
    run_step "benchmark_backbones.py --device cuda" 110 0 '' \
        "$PY" tools/analysis_tools/benchmark_backbones.py --device cuda \
        --models FEC-Small FEC-Base --sizes 224 512 800x1344 --sweep --timeout 60
else
    run_step "benchmark_ops.py --device cuda (ops only: no fec_mm.models here)" 90 0 '' \
        "$PY" tools/analysis_tools/benchmark_ops.py --device cuda --settings cls seg det \
        --repeat 5 --timeout 60 --skip-backbone
    report "## benchmark_backbones.py --device cuda" "" "**skipped**: it needs fec_mm.models (mmengine, mmcv); give their wheels with --wheels." ""
    SKIPPED+=("benchmark_backbones.py (no fec_mm.models)")
fi

# --- summary --------------------------------------------------------------
if [ "$DRY_RUN" -eq 1 ]; then
    echo "[dry-run] report: $OUT (budget ${BUDGET} s); nothing was run"
    exit 0
fi
report "## Summary" ""
report "Total time: $(($(date +%s) - START)) s of a ${BUDGET} s budget."
for s in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do report "- skipped: $s"; done
for f in "${FAILED[@]+"${FAILED[@]}"}"; do report "- **FAILED**: $f"; done
[ "${#FAILED[@]}" -eq 0 ] && report "- every step that ran passed"
echo "$PROG: report written to $OUT" >&2
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "$PROG: ${#FAILED[@]} step(s) failed: ${FAILED[*]}" >&2
    exit 1
fi
exit 0
