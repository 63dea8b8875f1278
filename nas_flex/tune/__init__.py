"""The search runner: Ray Tune trials with Optuna as the sampler. The only place that imports ray and optuna's
samplers; ``import nas_flex.tune`` itself stays light (Ray loads when a search starts)."""

from nas_flex.tune.runner import METRICS, ResourceError, StorageError, resolve_space, search

__all__ = ["METRICS", "ResourceError", "StorageError", "resolve_space", "search"]
