# Demo: the Semantic FPN demo (fec_semfpn_demo.py: same data, image size and
# schedule) with a Context Clusters backbone, CoC-Tiny (docs/user_guides/context_cluster.md),
# trained from scratch on the generated shapes of tools/make_demo_data.py, on CPU.
# CoC-Tiny has FEC-Small's widths, so the neck is unchanged.
_base_ = './fec_semfpn_demo.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ContextCluster',
        arch='tiny',
        num_centers=2,
        folds=(8, 4, 2, 1),
        out_indices=(0, 1, 2, 3),
        init_cfg=None))
# FEC's ClusterMapHook traces cluster poolings, which CoC does not have; CoC's
# per-block assignment maps: fec_mm.visualization.coc_cluster_maps.
custom_hooks = []
