# The authors' COCO 1x schedule for FEC detectors (docs/notes/design.md §4): AdamW
# lr 2e-4, weight decay 1e-4, 500-iteration linear warm-up, 12 epochs with the
# learning rate multiplied by 0.2 at epochs 8, 9 and 11, global batch 16
# (8 GPUs x 2 images). Other batch sizes: `tools/train.py ... --auto-scale-lr`.
# Inherits mmdet's 1x schedule (train/val/test loops) and replaces its SGD.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    # As for other transformer-like backbones in mmdet: no decay on norms,
    # biases, FEC's layer scales and similarity scalars (alpha, beta).
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 9, 11],
         gamma=0.2),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
