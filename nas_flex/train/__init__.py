"""One trial: the training loop, metering and learned-size recording. Reports through a callback; no Ray here."""

from nas_flex.train.config import DEFAULTS, KEY_DOCS, canonical_key, resolve_config
from nas_flex.train.metering import FlopCount, count_flops, count_parameters
from nas_flex.train.trial import run_trial

__all__ = ["DEFAULTS", "KEY_DOCS", "FlopCount", "canonical_key", "count_flops", "count_parameters",
           "resolve_config", "run_trial"]
