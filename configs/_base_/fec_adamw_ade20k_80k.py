# The authors' ADE20K schedule for FEC segmentors (docs/notes/design.md §4): AdamW
# lr 1e-4, weight decay 1e-4, poly decay (power 0.9) to 0 over 80k iterations,
# global batch 16 (4 GPUs x 4 crops). Other batch sizes:
# `tools/train.py ... --auto-scale-lr`.
# Inherits mmseg's 80k schedule (loops, hooks) and replaces its SGD.
_base_ = 'mmseg::_base_/schedules/schedule_80k.py'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0., begin=0, end=80000, by_epoch=False),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
