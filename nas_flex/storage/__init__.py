"""A search's storage folder, at the bottom of the stack: its layout and file names, the one atomic write, the
checks that keep every path inside it, and the small JSON records beside the leaderboard.

Torch-, Ray- and pyarrow-free: the leaderboard, the trainer, the tuner and export all ask this package where a file
lives and how to write it.

Example:
    >>> from nas_flex.storage import StorageLayout, write_json_atomic
    >>> StorageLayout("runs/digits").experiment_file("e1").as_posix()
    'runs/digits/_experiments/e1.json'
"""

from nas_flex.storage.atomic import (
    fsync_dir,
    fsync_file,
    is_temporary,
    temporary_name,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
)
from nas_flex.storage.layout import (
    COMPACTED_LEVEL,
    HISTORY_DIR,
    MERGE_DIR,
    TRIAL_FILE,
    TRIAL_STATE_FILE,
    StorageLayout,
    file_level,
    is_row_file,
    merged_file_name,
    trial_file_name,
)
from nas_flex.storage.records import claim, private_ray_dir, read_json, read_trial_file, write_trial_file
from nas_flex.storage.safety import SAFE_NAME, check_experiment, check_no_links, check_trial_id, inside, remove_tree

__all__ = [
    "StorageLayout", "HISTORY_DIR", "MERGE_DIR", "TRIAL_FILE", "TRIAL_STATE_FILE", "COMPACTED_LEVEL",
    "trial_file_name", "merged_file_name", "file_level", "is_row_file",
    "write_atomic", "write_bytes_atomic", "write_json_atomic", "temporary_name", "is_temporary", "fsync_file",
    "fsync_dir",
    "read_json", "read_trial_file", "write_trial_file", "claim", "private_ray_dir",
    "SAFE_NAME", "check_trial_id", "check_experiment", "inside", "check_no_links", "remove_tree",
]
