"""Cluster maps of an FEC or Context Clusters model on one image
(docs/user_guides/visualization.md; CoC: docs/user_guides/context_cluster.md).

    python tools/visualization/vis_clusters.py IMG CONFIG [CHECKPOINT] \
        [--arch A] [--stage S ...] [--block STAGE.BLOCK ...] [--head H ...] \
        [--groups K] [--merge-feature {pooled,final,conv_f}] [--alpha A] \
        [--out-dir DIR | --html OUT.html] [--device D] [--cfg-options ...] [--json]
    python tools/visualization/vis_clusters.py IMG --arch small [CHECKPOINT]
    python tools/visualization/vis_clusters.py IMG --arch coc-tiny [CHECKPOINT]

The logic is fec_mm.visualization.cli.
"""
from fec_mm.visualization.cli import main

if __name__ == '__main__':
    raise SystemExit(main())
