"""The layer library: discrete baselines and learned-size convolutions behind one registry.

Knows nothing of models, search, Ray or Parquet. The contract every layer keeps: ``nas_flex.layers.base`` and
docs/layers.md.
"""

from nas_flex.layers.base import KernelLayer
from nas_flex.layers.registry import available, build, check_hparams, get, hparam_names, register, unregister

__all__ = ["KernelLayer", "available", "build", "check_hparams", "get", "hparam_names", "register", "unregister"]
