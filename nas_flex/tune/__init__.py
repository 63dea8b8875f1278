"""The search runner: Ray Tune trials with Optuna as the sampler. The only place that imports ray and optuna's
samplers; ``import nas_flex.tune`` itself stays light (Ray loads when a search starts)."""

from nas_flex.tune.errors import ResourceError, StorageError
from nas_flex.tune.options import RunConfig, TuneConfig
from nas_flex.tune.resume import ResumePlan, plan_resume
from nas_flex.tune.runner import METRICS, resolve_space, search

__all__ = ["METRICS", "ResourceError", "StorageError", "RunConfig", "TuneConfig", "ResumePlan", "plan_resume",
           "resolve_space", "search"]
