"""Depth-stability tools: a per-layer training monitor and the schemes × depth benchmark.

- ``measures.py``: the per-layer quantities as plain tensor functions (grouped norms, relative parameter update, position cosine).
- ``monitor.py``: :class:`LayerMonitor`, a ``TrainerCallback`` that records them every k steps
  (``deepln pretrain --monitor-every K``), with TensorBoard scalars/histograms and PNG heatmaps.
- ``grid.py``: ``deepln stability``'s grid of small models (schemes × depths × learning rates × warmup, GPT and BERT)
  and the failure-mode classification; ``report.py``: its CSV / Markdown table and PNG plots.
- ``bound.py``: DeepNet's model-update bound, measured after one optimizer step as depth grows.
- ``cli.py``: the ``stability`` subcommand.
"""

from .measures import grouped_norms, mean_position_cosine
from .monitor import LayerMonitor, monitor_callbacks

__all__ = ["LayerMonitor", "monitor_callbacks", "grouped_norms", "mean_position_cosine"]
