"""Record full mmcv's nms, batched_nms and RoIAlign outputs as golden data.

fec-mm's default set-up has mmcv-lite, whose ``mmcv._ext`` comes from
``mmcv_lite_ops/`` (torchvision's kernels). ``tests/test_mmcv_lite_ops.py``
checks that one against these outputs of the compiled mmcv, so CI needs no
mmcv build. Regenerate (inputs are seeded, so only a change of mmcv's kernels
changes the file) in an environment with the compiled mmcv:

    make setup MMCV=full
    .venv/bin/python tools/record_mmcv_ops_golden.py  # writes tests/data/mmcv_ops_golden.pt

The file holds every case's inputs and the kept indices (the kept boxes and
scores are those rows of the inputs), RoIAlign's outputs and input gradients;
with the inputs in it, the test does not depend on a random generator.
"""
import argparse
import importlib.machinery
import os.path as osp
from typing import Dict, List

import mmcv
import mmcv._ext
import torch
from mmcv.ops import RoIAlign, batched_nms, nms

DEFAULT_OUT = osp.join(osp.dirname(__file__), '..', 'tests', 'data', 'mmcv_ops_golden.pt')


def random_boxes(gen: torch.Generator, num: int, extent: float, max_size: float) -> torch.Tensor:
    """(num, 4) float32 x1, y1, x2, y2 boxes with corners in [0, extent + max_size]."""
    xy = torch.rand(num, 2, generator=gen) * extent
    wh = torch.rand(num, 2, generator=gen) * (max_size - 1) + 1
    return torch.cat([xy, xy + wh], dim=1)


def nms_cases(gen: torch.Generator) -> List[Dict]:
    """Inputs of the nms cases: random, ties, integer grid (IoUs exactly at
    the thresholds), degenerate boxes, empty, score threshold and max_num."""
    cases = []
    boxes = random_boxes(gen, 400, 200, 60)
    scores = torch.rand(400, generator=gen)
    for thr in (0.3, 0.5, 0.7):
        cases.append(dict(name=f'random_iou{thr}', boxes=boxes, scores=scores, iou_threshold=thr))
    cases.append(dict(name='random_score_thr_max_num', boxes=boxes, scores=scores,
                      iou_threshold=0.5, score_threshold=0.3, max_num=40))
    # Ties: scores on a coarse grid, and 30 exact duplicates of other boxes.
    tie_boxes = random_boxes(gen, 300, 100, 40)
    tie_scores = (torch.rand(300, generator=gen) * 10).floor() / 10
    dup = torch.randint(0, 270, (30,), generator=gen)
    tie_boxes[270:] = tie_boxes[dup]
    tie_scores[270:] = tie_scores[dup]
    cases.append(dict(name='ties', boxes=tie_boxes, scores=tie_scores, iou_threshold=0.5))
    # Integer boxes: many IoUs are exactly 1/2, 3/5, 1/3, 1/4 (in float32).
    xy = torch.randint(0, 12, (300, 2), generator=gen).float()
    wh = torch.randint(1, 7, (300, 2), generator=gen).float()
    grid_boxes = torch.cat([xy, xy + wh], dim=1)
    grid_scores = torch.randint(0, 20, (300,), generator=gen).float() / 20
    for thr in (0.5, 0.6, 1 / 3, 0.25):
        cases.append(dict(name=f'grid_iou{thr:.3f}', boxes=grid_boxes, scores=grid_scores,
                          iou_threshold=thr))
    # Zero-width/height boxes (IoU 0/0) among ordinary ones.
    degenerate = random_boxes(gen, 60, 20, 20)
    degenerate[::3, 2] = degenerate[::3, 0]
    degenerate[1::5, 3] = degenerate[1::5, 1]
    cases.append(dict(name='degenerate', boxes=degenerate, scores=torch.rand(60, generator=gen),
                      iou_threshold=0.5))
    cases.append(dict(name='empty', boxes=torch.zeros(0, 4), scores=torch.zeros(0),
                      iou_threshold=0.5))
    return cases


def batched_nms_cases(gen: torch.Generator) -> List[Dict]:
    """Inputs of batched_nms: per class, class agnostic, and the split path."""
    boxes = random_boxes(gen, 500, 60, 50)
    scores = torch.rand(500, generator=gen)
    idxs = torch.randint(0, 5, (500,), generator=gen)
    return [
        dict(name='per_class', boxes=boxes, scores=scores, idxs=idxs,
             nms_cfg=dict(type='nms', iou_threshold=0.5), class_agnostic=False),
        dict(name='class_agnostic', boxes=boxes, scores=scores, idxs=idxs,
             nms_cfg=dict(type='nms', iou_threshold=0.6), class_agnostic=True),
        dict(name='split', boxes=boxes, scores=scores, idxs=idxs,
             nms_cfg=dict(type='nms', iou_threshold=0.7, split_thr=100), class_agnostic=False),
    ]


def roi_align_cases(gen: torch.Generator) -> List[Dict]:
    """Inputs of RoIAlign: boxes inside, across and outside the border, tiny
    and zero-size ones, at mmdet's settings and a few others."""
    cases = []
    settings = [  # output size, spatial scale, sampling ratio, aligned, boxes
        ((7, 7), 0.25, 0, True, 48),   # mmdet's bbox RoI extractor
        ((14, 14), 0.125, 0, True, 24),  # mask RoI extractor
        ((3, 5), 0.5, 2, True, 48),
        ((4, 4), 1.0, 0, False, 48),   # legacy, non-aligned
    ]
    for out_size, scale, ratio, aligned, num in settings:
        feats = torch.randn(2, 2, 12, 16, generator=gen)
        height, width = 12 / scale, 16 / scale  # image size
        x1 = (torch.rand(num, generator=gen) * 1.4 - 0.3) * width
        y1 = (torch.rand(num, generator=gen) * 1.4 - 0.3) * height
        w = torch.rand(num, generator=gen) * 0.8 * width
        h = torch.rand(num, generator=gen) * 0.8 * height
        w[:4] = torch.rand(4, generator=gen) * 2  # under a pixel or two
        h[:4] = torch.rand(4, generator=gen) * 2
        w[4:6] = 0  # zero size
        h[6:8] = 0
        x1[8:10] = width + 3  # wholly outside
        y1[10:12] = -h[10:12] - 5
        rois = torch.stack([torch.randint(0, 2, (num,), generator=gen).float(),
                            x1, y1, x1 + w, y1 + h], dim=1)
        cases.append(dict(name=f'out{out_size[0]}x{out_size[1]}_scale{scale}_ratio{ratio}_'
                          f'aligned{aligned}', input=feats, rois=rois, output_size=out_size,
                          spatial_scale=scale, sampling_ratio=ratio, aligned=aligned,
                          grad_output=torch.randn(num, 2, *out_size, generator=gen)))
    return cases


def record() -> Dict:
    """Run full mmcv on every case; returns what the golden file holds."""
    gen = torch.Generator().manual_seed(0)
    golden = dict(mmcv=str(mmcv.__version__), torch=str(torch.__version__),
                  nms=[], batched_nms=[], roi_align=[])
    for case in nms_cases(gen):
        kwargs = {k: case[k] for k in ('score_threshold', 'max_num') if k in case}
        dets, keep = nms(case['boxes'], case['scores'], case['iou_threshold'], **kwargs)
        assert torch.equal(dets, torch.cat([case['boxes'][keep], case['scores'][keep, None]], 1))
        golden['nms'].append(dict(case, keep=keep))
    for case in batched_nms_cases(gen):
        dets, keep = batched_nms(case['boxes'], case['scores'], case['idxs'],
                                 dict(case['nms_cfg']), case['class_agnostic'])
        assert torch.equal(dets, torch.cat([case['boxes'][keep], case['scores'][keep, None]], 1))
        golden['batched_nms'].append(dict(case, keep=keep))
    for case in roi_align_cases(gen):
        feats = case['input'].clone().requires_grad_()
        layer = RoIAlign(case['output_size'], case['spatial_scale'], case['sampling_ratio'],
                         aligned=case['aligned'])
        out = layer(feats, case['rois'])
        out.backward(case['grad_output'])
        golden['roi_align'].append(dict(case, output=out.detach(), grad_input=feats.grad))
    return golden


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=DEFAULT_OUT, help='golden file (default: %(default)s)')
    args = parser.parse_args()
    if not mmcv._ext.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        raise SystemExit(f'mmcv._ext is {mmcv._ext.__file__}, not the compiled mmcv: the golden '
                         'outputs must come from full mmcv (make setup MMCV=full)')
    golden = record()
    torch.save(golden, args.out)
    counts = {k: len(golden[k]) for k in ('nms', 'batched_nms', 'roi_align')}
    print(f'wrote {osp.normpath(args.out)}: {counts} cases of mmcv {golden["mmcv"]} '
          f'({mmcv._ext.__file__})')


if __name__ == '__main__':
    main()
