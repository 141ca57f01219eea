#!/usr/bin/env bash
# The main job (docs/get_started.md, "First run: the demo"): write the demo data if missing,
# train FEC-Small Mask R-CNN on it on CPU, evaluate it at the end of
# training (COCO bbox/segm AP from pycocotools), then print a summary and
# check that the loss fell and both APs are above 0 (exit status 1 if not),
# and publish the final checkpoint (weights + meta, sha256 in the name).
# Extra arguments go to tools/train.py (e.g. --cfg-options randomness.seed=0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CONFIG=configs/demo/fec_maskrcnn_demo.py
WORK_DIR=work_dirs/fec_maskrcnn_demo
# One compute thread unless told otherwise: on 2 cores shared with other
# jobs, a step on torch's two spinning OpenMP threads took 5-10x as long as
# on one (measured). Set OMP_NUM_THREADS to use more on an idle machine.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

"$PY" tools/make_demo_data.py --out data/demo
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "$@"
"$PY" -m fec_mm.datasets.demo_report "$WORK_DIR" --require coco/bbox_mAP coco/segm_mAP
"$PY" tools/model_converters/publish_model.py "$(cat "$WORK_DIR/last_checkpoint")" \
  "$WORK_DIR/fec_maskrcnn_demo.pth"
