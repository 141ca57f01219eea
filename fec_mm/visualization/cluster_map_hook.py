"""``ClusterMapHook``: cluster maps of a few validation images during training.

Registered in mmengine's root ``HOOKS`` (which the mmdet, mmseg and
mmpretrain registries fall back to) by ``import fec_mm``:

    custom_hooks = [dict(type='ClusterMapHook', interval=1, num_images=2)]

After every ``interval``-th validation, on rank 0 only, it draws the sheet
(image | stage maps | merged | class contributions) of the first
``num_images`` validation images through the runner's visualizer
(``add_image``: ``vis_data/vis_image/cluster_maps_{i}_{step}.png`` with
mmengine's local backend, or TensorBoard) and logs the per-stage numbers,
averaged over the images, with ``add_scalars`` under ``cluster_maps/``
(in ``scalars.json`` these records come beside the validation metrics;
:func:`fec_mm.datasets.demo_report.summarize_run` leaves them out).

The backbone is found through model wrappers (DDP, FSDP) and test-time
augmentation models (``DetTTAModel``, ``SegTTAModel``); on a model without
an FEC backbone the hook logs a warning and does nothing (it never stops a
run that would work without it).
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop

from ..models.unwrap import find_fec_backbone, unwrap_model

SCALAR_PREFIX = 'cluster_maps/'
SCALAR_KEYS = ('non_empty', 'effective', 'own_cell_share', 'fragmentation',
               'cluster_branch_share')


@HOOKS.register_module()
class ClusterMapHook(Hook):
    """Draw cluster maps of fixed validation images every few validations.

    Args:
        interval (int): Draw after every ``interval``-th validation. Default 1.
        num_images (int): The first ``num_images`` images of the validation
            set. Default 2.
        groups (int, optional): Merge the final clusters into this many
            groups (shown beside the unmerged map). Default None.
        merge_feature (str): 'pooled', 'final' or 'conv_f'. Default 'final'.
        alpha (float): Opacity of the fills. Default 0.5.
        stages (Sequence[int], optional): Stages drawn; None: all.
        panel_px (int): Long side of each panel of the sheet. Default 320.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 1, num_images: int = 2, groups: Optional[int] = None,
                 merge_feature: str = 'final', alpha: float = 0.5,
                 stages: Optional[Sequence[int]] = None, panel_px: int = 320) -> None:
        from .views import ViewOptions
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f'ClusterMapHook: interval must be an int >= 1, got {interval!r}')
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f'ClusterMapHook: num_images must be an int >= 1, '
                             f'got {num_images!r}')
        self.interval = interval
        self.num_images = num_images
        self.options = ViewOptions(stages=stages, groups=groups, merge_feature=merge_feature,
                                   alpha=alpha)
        self.panel_px = panel_px
        self._validations = 0
        self._active = True

    def before_run(self, runner) -> None:
        """Step aside (with a warning) on a model without an FEC backbone;
        fail at the start, not after the first validation, on options the
        backbone cannot draw."""
        self._active = self._check(unwrap_model(runner.model))

    def _check(self, model) -> bool:
        """Whether ``model`` (unwrapped) can be drawn; raises on bad options."""
        from .contributions import linear_classifier_head
        from .views import check_options
        backbone = find_fec_backbone(model)
        if backbone is None:
            MMLogger.get_current_instance().warning(
                f'ClusterMapHook: {type(model).__name__} has no FEC backbone (backbone: '
                f'{type(getattr(model, "backbone", None)).__name__}); the hook draws nothing')
            return False
        self.options.fc = linear_classifier_head(model)
        check_options(self.options, backbone.num_stages, backbone.arch['depths'],
                      backbone.arch['heads'])
        return True

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        self._validations += 1
        if not self._active or self._validations % self.interval or not is_main_process():
            return
        model = unwrap_model(runner.model)
        dataset = runner.val_loop.dataloader.dataset
        # As mmengine's LoggerHook: epochs for epoch-based training, else iterations.
        by_epoch = isinstance(runner._train_loop, EpochBasedTrainLoop)
        step = runner.epoch if by_epoch else runner.iter
        was_training = model.training
        model.eval()
        try:
            reports = self._draw(runner, model, dataset, step)
        finally:
            model.train(was_training)
        runner.visualizer.add_scalars(self._mean_scalars(reports), step=step)

    def _draw(self, runner, model, dataset, step: int) -> List[dict]:
        from mmengine.dataset import pseudo_collate

        from .cluster_maps import cluster_maps
        from .views import draw_cluster_sheet, view_layers
        backbone = find_fec_backbone(model)
        reports = []
        for i in range(min(self.num_images, len(dataset))):
            data = dataset[i]
            with torch.no_grad():
                batch = model.data_preprocessor(pseudo_collate([data]), False)
            display = data['inputs'].flip(0).permute(1, 2, 0).cpu().numpy().astype(np.uint8)
            maps = cluster_maps(backbone, batch['inputs'], display.shape[:2])
            layers, report = view_layers(maps, self.options)
            sheet = draw_cluster_sheet(display, layers, report, self.options.alpha,
                                       self.panel_px)
            runner.visualizer.add_image(f'cluster_maps_{i}', sheet, step=step)
            reports.append(report)
        return reports

    @staticmethod
    def _mean_scalars(reports: List[dict]) -> Dict[str, float]:
        """``cluster_maps/stage{k}/{number}``, averaged over the images."""
        scalars: Dict[str, List[float]] = {}
        for report in reports:
            for s in report['stages']:
                for key in SCALAR_KEYS:
                    scalars.setdefault(f"{SCALAR_PREFIX}stage{s['stage']}/{key}", []).append(
                        float(s[key]))
        return {k: sum(v) / len(v) for k, v in scalars.items()}
