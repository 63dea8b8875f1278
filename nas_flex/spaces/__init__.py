"""Search spaces in Python: define-by-run functions of an optuna-compatible trial, their validation, and replay.

No Ray and no GPU here; Optuna is imported only when a space is validated or replayed.
"""

from nas_flex.spaces.space import SAMPLERS, SearchSpace, load_space
from nas_flex.spaces.validate import grid_size, replay, sample_configs, validate_config, validate_space

__all__ = ["SAMPLERS", "SearchSpace", "load_space", "grid_size", "replay", "sample_configs", "validate_config",
           "validate_space"]
