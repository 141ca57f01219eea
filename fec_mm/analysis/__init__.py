"""Analysis of FEC models: cost (FLOPs in mmengine's counter, see ``flops``)."""
from .flops import FlopCount, clustering_flops, config_flops, count_flops, register_flop_handles

__all__ = ['FlopCount', 'clustering_flops', 'config_flops', 'count_flops', 'register_flop_handles']
