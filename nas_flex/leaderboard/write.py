"""Writing one finished trial to a leaderboard: its history, then its row, each atomically; then a merge when row
files pile up. Sits above ``store`` (reading) and ``merge``, so neither imports the other's caller.

pyarrow and the standard library only: a trial process writes without pandas or torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nas_flex.errors import LeaderboardSchemaError
from nas_flex.leaderboard.merge import maybe_merge
from nas_flex.leaderboard.schema import history_table, trial_table
from nas_flex.leaderboard.store import MERGE_AT, MergeWarning, write_table_atomic
from nas_flex.record import TrialRecord
from nas_flex.storage.layout import HISTORY_DIR, trial_file_name

__all__ = ["write_trial"]


def write_trial(path: str | os.PathLike, result: TrialRecord | Mapping[str, Any], *, experiment: str, trial_id: str,
                config_key: str | None = None, history: bool = True, sync: bool = True,
                merge_at: int = MERGE_AT) -> Path:
    """Write one finished trial to the leaderboard at ``path``, atomically; return the row's file.

    The per-epoch history (``result['history']``) goes to ``path/_history/`` first, then the row, so a visible row
    always has its history. Writing the same ``(experiment, trial_id)`` again replaces both: the leaderboard keeps
    one row per trial. Many processes may write at once.

    Once ``merge_at`` row files are in the directory, the writer merges them into one Parquet file (and merged
    files into larger ones, see ``nas_flex.leaderboard.merge``), unless another writer is merging already: a large
    leaderboard stays a few hundred files. A failed merge only warns (``MergeWarning``): the row is written.

    Args:
        path: the leaderboard directory (created if missing).
        result: what ``nas_flex.train.run_trial`` returns (a ``nas_flex.record.TrialRecord``), or its ``to_dict()``.
        experiment: the experiment name.
        trial_id: the trial id within the experiment.
        config_key: a key of the config (e.g. ``nas_flex.train.canonical_key`` or a hash of it); default: the first
            16 hex digits of the sha256 of the config's canonical JSON.
        history: also write the per-epoch history.
        sync: fsync each file before its rename and the directory after it, so a power loss leaves the old row or
            the new one, never an empty file. Costs a few ms per write; False for scratch boards and tests.
        merge_at: row files that trigger a merge (``MERGE_AT``); 0 never merges.

    Raises:
        LeaderboardSchemaError: the result does not fit the schema (an unknown key, a wrong type, ...), or
            ``merge_at`` is not 0 or >= 2.
        StorageFullError: the disk is full (nothing half-written is left; a row written before stays).

    Example:
        >>> write_trial("runs/digits", result, experiment="digits", trial_id="t0001")  # doctest: +SKIP
        PosixPath('runs/digits/digits--t0001.parquet')
    """
    if isinstance(merge_at, bool) or not isinstance(merge_at, int) or merge_at < 0 or merge_at == 1:
        raise LeaderboardSchemaError(f"`merge_at` must be 0 (never merge) or an integer >= 2, but got {merge_at!r}")
    root = Path(path)
    written_at = datetime.now(timezone.utc)
    row = trial_table(result, experiment=experiment, trial_id=trial_id, written_at=written_at,
                      config_key=config_key)  # validate everything before touching the disk
    name = trial_file_name(experiment, trial_id)
    if history:
        epochs = history_table(result, experiment=experiment, trial_id=trial_id, written_at=written_at)
        write_table_atomic(epochs, root / HISTORY_DIR / name, sync=sync)
    file = write_table_atomic(row, root / name, sync=sync)
    if merge_at:
        try:
            maybe_merge(root, merge_at=merge_at, sync=sync)
        except Exception as err:  # noqa: BLE001 - the row is in place; a failed merge loses no row
            warnings.warn(f"could not merge the row files of the leaderboard {str(root)!r} "
                          f"({type(err).__name__}: {err}); every row is kept, reading is slower until a merge "
                          "succeeds", MergeWarning, stacklevel=2)
    return file
