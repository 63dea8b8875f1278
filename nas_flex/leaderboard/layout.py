"""The storage layout moved to ``nas_flex.storage.layout``; this module keeps the old import path working."""

from nas_flex.storage.layout import (
    CLAIMS_DIR,
    EXPERIMENTS_DIR,
    HISTORY_DIR,
    MERGE_DIR,
    RAY_DIR,
    RUNNING_DIR,
    TRIAL_FILE,
    TRIAL_STATE_FILE,
    WEIGHTS_DIR,
    StorageLayout,
)

__all__ = ["StorageLayout", "HISTORY_DIR", "MERGE_DIR", "WEIGHTS_DIR", "EXPERIMENTS_DIR", "CLAIMS_DIR",
           "RUNNING_DIR", "RAY_DIR", "TRIAL_FILE", "TRIAL_STATE_FILE"]
