"""GPU checks run by ``tools/analysis_tools/gpu_check.sh``: the backbones on
the Triton ops against the PyTorch reference, and an AMP training step of
the Mask R-CNN config on random data.

Imports torch alone at module level, so that ``python -m fec_mm.gpu_checks
--help`` works on a machine without OpenMMLab; the backbones need mmengine and
mmcv(-lite), the training step mmdet too (each check says what is missing).

``python -m fec_mm.gpu_checks backbone --models FEC-Small CoC-Small --sizes 224 512
--dtypes float32 float16 bfloat16``
``python -m fec_mm.gpu_checks amp-maskrcnn [--config configs/fec_maskrcnn.py]``

Each prints a Markdown table (or a line saying why it was skipped) and exits
0 when every row passed, 1 when one failed (an exception fails its row, the
others still run), 2 when it could not run (missing library, no GPU).
"""
import argparse
import math
import sys
import time
from typing import Dict, Optional, Sequence, Tuple

import torch

DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
# Relative L2 error ||triton - float32 reference|| / ||float32 reference||
# allowed per dtype, for the outputs and for the parameter gradients. float32:
# both paths compute in float32 with other summation orders (and may flip a
# float32 near tie, which moves a few tokens); half precision: autocast rounds
# the convolutions and MLPs to 8 (bfloat16) or 11 (float16) bits, and flips
# near-tied assignments. First guesses, to be replaced by measured margins
# once the check has run on a GPU; under autocast the reference path's own
# error times HALF_MARGIN is allowed too (see backbone_parity).
TOLERANCES = {'float32': (1e-4, 1e-3), 'float16': (1e-2, 3e-2), 'bfloat16': (3e-2, 6e-2)}
HALF_MARGIN = 1.5
GRAD_FLOOR = 1e-3
MODELS = ('FEC-Small', 'CoC-Small')
EXIT_SKIPPED = 2


class CheckSkipped(RuntimeError):
    """A check could not run here (no GPU, a library missing)."""


def build_backbone(name: str, size: int, ops_impl: str) -> torch.nn.Module:
    """FEC-Small or ContextCluster-Small with the settings of
    ``benchmark_backbones.py`` for ``size`` (224: classification centers,
    else segmentation ones); weights from the current torch seed."""
    try:
        from fec_mm.models import FEC, ContextCluster
    except ImportError as e:
        raise CheckSkipped(f'the backbones need mmengine and mmcv(-lite): {e}') from e
    if name == 'FEC-Small':
        centers = (4, 4, 2, 2) if size == 224 else (10, 10, 5, 5)
        return FEC('small', num_centers=centers, ops_impl=ops_impl)
    if name == 'CoC-Small':
        return ContextCluster('small', num_centers=2 if size == 224 else 5,
                              folds=(8, 4, 2, 1), ops_impl=ops_impl)
    raise ValueError(f'unknown model {name!r}; valid ones are {MODELS}')


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def _forward_backward(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype
                      ) -> Tuple[Sequence[torch.Tensor], Dict[str, torch.Tensor]]:
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        outs = model(x)
        loss = sum(o.float().mean() for o in outs)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return [o.float() for o in outs], grads


def _errors(outs, grads, ref_outs, ref_grads) -> Tuple[float, float, str]:
    """Largest relative L2 error over the outputs, and over the parameters'
    gradients with the parameter's name.

    Per parameter ||g - r|| / max(||r||, GRAD_FLOOR·||r_all||): a parameter
    whose gradient is a vanishing share of the whole (1e-8 beside 0.25 at
    initialisation) would otherwise compare rounding noise with rounding noise.
    """
    if grads.keys() != ref_grads.keys():
        raise RuntimeError('parameters with gradients differ: '
                           f'{sorted(grads.keys() ^ ref_grads.keys())}')
    out_error = max(_relative_error(o, r) for o, r in zip(outs, ref_outs))
    total = float(torch.cat([g.detach().double().flatten() for g in ref_grads.values()]).norm())
    grad_errors = {n: float((grads[n].double() - ref_grads[n].double()).norm())
                   / max(float(ref_grads[n].double().norm()), GRAD_FLOOR * total, 1e-30)
                   for n in grads}
    worst = max(grad_errors, key=grad_errors.get)
    return out_error, grad_errors[worst], worst


def backbone_parity(name: str, size: int, dtype: str, device: str = 'cuda',
                    seed: int = 0, impl: str = 'triton') -> dict:
    """Forward + backward of ``name`` at ``size``² on ``ops_impl=impl``
    (default 'triton') against ``'reference'``, same weights and input.

    float32: ``impl`` vs the reference, relative L2 errors within
    :data:`TOLERANCES`. float16 / bfloat16 (autocast): the half-precision
    rounding itself flips near-tied assignments (the reference's cosines are
    rounded to the half type, the kernels accumulate in float32), so both
    paths under autocast are compared with the float32 reference, and
    ``impl`` must be within :data:`TOLERANCES` or no worse than
    :data:`HALF_MARGIN` times the reference path's own error.

    Returns:
        dict: ``output_error`` (largest over the outputs), ``grad_error``
        (largest over the parameters, see :func:`_errors`; ``worst_grad`` its
        name), ``reference_errors`` (the reference path's (output, gradient)
        errors under autocast; None for float32), ``tolerances``, ``passed``,
        ``seconds``.

    Raises:
        CheckSkipped: No CUDA device, or the backbones cannot be imported.
    """
    if dtype not in DTYPES:
        raise ValueError(f'unknown dtype {dtype!r}; valid ones are {list(DTYPES)}')
    if device == 'cuda' and not torch.cuda.is_available():
        raise CheckSkipped('no CUDA device (torch.cuda.is_available() is False)')
    start = time.perf_counter()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x = x.to(device)

    def run(ops_impl: str, run_dtype: torch.dtype):
        torch.manual_seed(seed)
        model = build_backbone(name, size, ops_impl).to(device).train()
        return _forward_backward(model, x, run_dtype)

    ref_outs, ref_grads = run('reference', torch.float32)
    outs, grads = run(impl, DTYPES[dtype])
    out_error, grad_error, worst = _errors(outs, grads, ref_outs, ref_grads)
    out_tol, grad_tol = TOLERANCES[dtype]
    reference_errors = None
    if dtype != 'float32':
        half_outs, half_grads = run('reference', DTYPES[dtype])
        reference_errors = _errors(half_outs, half_grads, ref_outs, ref_grads)[:2]
        out_tol = max(out_tol, HALF_MARGIN * reference_errors[0])
        grad_tol = max(grad_tol, HALF_MARGIN * reference_errors[1])
    finite = all(torch.isfinite(o).all() for o in outs)
    return dict(model=name, size=size, dtype=dtype, output_error=out_error,
                grad_error=grad_error, worst_grad=worst, reference_errors=reference_errors,
                tolerances=(out_tol, grad_tol),
                passed=bool(finite and out_error <= out_tol and grad_error <= grad_tol),
                seconds=time.perf_counter() - start)


def _random_detection_batch(size: Tuple[int, int], num_classes: int, device: str,
                            seed: int = 0) -> dict:
    """One uint8 image and three random boxes with masks, as mmdet's
    ``PackDetInputs`` gives them to ``model.train_step``."""
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    H, W = size
    image = torch.randint(0, 256, (3, H, W), generator=gen, dtype=torch.uint8)
    boxes, masks = [], np.zeros((3, H, W), dtype=np.uint8)
    for i in range(3):
        x0, y0 = int(torch.randint(0, W // 2, (1,), generator=gen)), int(
            torch.randint(0, H // 2, (1,), generator=gen))
        x1, y1 = x0 + W // 4 + 8 * i, y0 + H // 4 + 8 * i
        boxes.append([x0, y0, x1, y1])
        masks[i, y0:y1, x0:x1] = 1
    sample = DetDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W),
                                         pad_shape=(H, W), scale_factor=(1.0, 1.0),
                                         batch_input_shape=(H, W)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32),
        labels=torch.randint(0, num_classes, (3,), generator=gen),
        masks=BitmapMasks(masks, H, W))
    return dict(inputs=[image], data_samples=[sample])


def amp_train_step(config: str, size: Tuple[int, int] = (800, 1344), steps: int = 2,
                   device: str = 'cuda', amp: bool = True) -> dict:
    """``steps`` AMP training steps (mmengine's ``AmpOptimWrapper``, float16)
    of the config's detector on a random image with random boxes and masks
    (``amp=False``: plain float32 steps, e.g. on CPU, where mmengine has no
    AMP wrapper).

    Returns:
        dict: ``losses`` (the last step's total), ``finite``, ``passed``,
        ``peak_mib`` (CUDA), ``seconds``.

    Raises:
        CheckSkipped: No CUDA device, or mmdet cannot be imported.
    """
    if device == 'cuda' and not torch.cuda.is_available():
        raise CheckSkipped('no CUDA device (torch.cuda.is_available() is False)')
    try:
        import mmdet.models  # noqa: F401
        from mmdet.registry import MODELS
        from mmengine.config import Config
        from mmengine.optim import AmpOptimWrapper, OptimWrapper
        from mmengine.registry import init_default_scope

        import fec_mm  # noqa: F401  (registers FEC)
    except ImportError as e:
        raise CheckSkipped(f'the AMP step needs mmdet, mmengine and mmcv(-lite): {e}') from e
    start = time.perf_counter()
    cfg = Config.fromfile(config)
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    wrapper = (AmpOptimWrapper(optimizer=optimizer, dtype='float16') if amp
               else OptimWrapper(optimizer=optimizer))
    num_classes = cfg.model.roi_head.bbox_head.num_classes
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    total, finite = float('nan'), True
    for step in range(steps):
        data = _random_detection_batch(size, num_classes, device, seed=step)
        log_vars = model.train_step(data, wrapper)
        values = {k: float(torch.as_tensor(v).detach()) for k, v in log_vars.items()}
        total = values['loss']
        finite = finite and all(math.isfinite(v) for v in values.values())
    return dict(config=config, size=size, steps=steps, loss=total, finite=finite,
                passed=finite, peak_mib=(torch.cuda.max_memory_allocated() / 2 ** 20
                                         if device == 'cuda' else float('nan')),
                seconds=time.perf_counter() - start)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m fec_mm.gpu_checks',
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='check', required=True)
    bb = sub.add_parser('backbone', help='triton vs reference, forward and backward')
    bb.add_argument('--models', nargs='+', choices=MODELS, default=list(MODELS))
    bb.add_argument('--sizes', nargs='+', type=int, default=[224, 512],
                    help='square input sides')
    bb.add_argument('--dtypes', nargs='+', choices=list(DTYPES), default=list(DTYPES))
    amp = sub.add_parser('amp-maskrcnn', help='AMP training steps of a Mask R-CNN config')
    amp.add_argument('--config', default='configs/fec_maskrcnn.py')
    amp.add_argument('--shape', type=int, nargs=2, default=(800, 1344), metavar=('H', 'W'))
    amp.add_argument('--steps', type=int, default=2)
    return parser


def _backbone_rows(args) -> bool:
    if not torch.cuda.is_available():
        raise CheckSkipped('no CUDA device (torch.cuda.is_available() is False)')
    print('Errors: relative L2 vs the float32 reference path; under autocast the '
          "reference path's own (outputs, gradients) error is in the last-but-two column.\n")
    print('| model | input | dtype | outputs: rel. L2 error (tol) | gradients: largest rel. '
          'L2 error (tol, parameter) | reference under autocast | time | result |')
    print('|---|---|---|---|---|---|---|---|')
    passed = True
    for name in args.models:
        for size in args.sizes:
            for dtype in args.dtypes:
                try:
                    r = backbone_parity(name, size, dtype)
                except CheckSkipped:
                    raise
                except Exception as e:  # one row fails, the others still run
                    print(f'| {name} | {size}² | {dtype} | error: {type(e).__name__}: '
                          f'{str(e).splitlines()[0] if str(e) else ""} | | | | FAIL |',
                          flush=True)
                    passed = False
                    continue
                ref = ('' if r['reference_errors'] is None else
                       '{:.2e}, {:.2e}'.format(*r['reference_errors']))
                print(f'| {name} | {size}² | {dtype} | {r["output_error"]:.2e} '
                      f'(≤ {r["tolerances"][0]:.3g}) | {r["grad_error"]:.2e} '
                      f'(≤ {r["tolerances"][1]:.3g}, {r["worst_grad"]}) | {ref} | '
                      f'{r["seconds"]:.1f} s | {"pass" if r["passed"] else "FAIL"} |', flush=True)
                passed = passed and r['passed']
    return passed


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one check, print its Markdown table; 0 passed, 1 failed, 2 skipped."""
    args = build_parser().parse_args(argv)
    try:
        if args.check == 'backbone':
            return 0 if _backbone_rows(args) else 1
        r = amp_train_step(args.config, tuple(args.shape), args.steps)
    except CheckSkipped as e:
        print(f'skipped: {e}')
        return EXIT_SKIPPED
    print('| config | input | steps | last loss | losses finite | peak memory | time | result |')
    print('|---|---|---|---|---|---|---|---|')
    print(f'| {r["config"]} | {r["size"][0]}x{r["size"][1]} | {r["steps"]} | {r["loss"]:.4g} | '
          f'{r["finite"]} | {r["peak_mib"]:.0f} MiB | {r["seconds"]:.1f} s | '
          f'{"pass" if r["passed"] else "FAIL"} |')
    return 0 if r['passed'] else 1


if __name__ == '__main__':
    sys.exit(main())
