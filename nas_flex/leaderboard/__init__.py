"""Parquet leaderboards: one atomic, schema-versioned file per finished trial, merged into larger files as they pile
up, and ``Leaderboard`` to query them.

Stands alone: pyarrow, pandas (for reading, imported on first use) and ``nas_flex.errors`` only, never torch, Ray or
Optuna, so a notebook or a CI job reads a leaderboard without the training stack.

Example:
    >>> from nas_flex.leaderboard import Leaderboard, write_trial
    >>> write_trial("runs/digits", run_trial(config), experiment="digits", trial_id="t0001")  # doctest: +SKIP
    >>> Leaderboard("runs/digits").top(5, "metrics_val_acc")  # doctest: +SKIP
    >>> pandas.read_parquet("runs/digits")  # the same rows, as plain Parquet  # doctest: +SKIP
"""

from nas_flex.leaderboard.board import Leaderboard
from nas_flex.leaderboard.merge import compact
from nas_flex.leaderboard.query import Filter, parse_filter
from nas_flex.leaderboard.schema import (
    CONFIG_COLUMNS,
    HISTORY_METRIC_DIRECTIONS,
    HISTORY_SCHEMA,
    METRIC_DIRECTIONS,
    SCHEMA_VERSION,
    TRIAL_SCHEMA,
)
from nas_flex.leaderboard.sizes import format_size_changes, size_changes
from nas_flex.leaderboard.store import (
    MERGE_AT,
    CorruptFileWarning,
    MergeWarning,
    check_storage,
    trial_file_name,
)
from nas_flex.leaderboard.table import format_leaderboard
from nas_flex.leaderboard.write import write_trial
from nas_flex.storage.layout import StorageLayout

__all__ = [
    "Leaderboard",
    "StorageLayout",
    "write_trial",
    "compact",
    "check_storage",
    "CorruptFileWarning",
    "MergeWarning",
    "MERGE_AT",
    "trial_file_name",
    "format_leaderboard",
    "parse_filter",
    "Filter",
    "size_changes",
    "format_size_changes",
    "SCHEMA_VERSION",
    "TRIAL_SCHEMA",
    "HISTORY_SCHEMA",
    "METRIC_DIRECTIONS",
    "HISTORY_METRIC_DIRECTIONS",
    "CONFIG_COLUMNS",
]
