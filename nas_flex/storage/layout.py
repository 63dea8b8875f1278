"""Where everything lives in a search's storage folder: the one place that names its paths and files.

``nas_flex.search(..., storage=PATH)`` writes, and export, resume and the leaderboard read::

    PATH/<experiment>--<trial_id>.parquet     one finished trial's row (pandas.read_parquet(PATH) reads exactly the
                                              row files: names that start with "_" or "." are skipped)
    PATH/merged-<level>-<uuid>.parquet        many trials' rows, merged from row files (level 1) or from merged
                                              files of the level below (nas_flex.leaderboard.merge)
    PATH/compacted-<uuid>.parquet             every row, made by compact()
    PATH/.<name>.<pid>.<random>.tmp           a file being written (or left by a crash): see nas_flex.storage.atomic
    PATH/_history/                            the per-epoch rows, the same file names
    PATH/_merge/lock, PATH/_merge/*.json      the merge lock, and the journal of a merge under way
    PATH/_weights/<experiment>--<trial_id>.pt each search trial's trained state_dict (weights_only-loadable)
    PATH/_experiments/<experiment>.json       an experiment's settings (what --resume continues)
    PATH/_claims/<experiment>/<config_key>    one file per trained architecture, holding the owner trial's id
                                              (dedupe of identical configs)
    PATH/_running/<experiment>/<trial_id>/    a started trial's scratch folder: trial.json (its config and sampler
                                              params) and trial_state.pt (its last epoch); removed once its row is
                                              written, kept for a retry or --resume otherwise

Ray Tune's own files (which Ray reads back with pickle) are never in the storage: they go to a private per-user
folder (``nas_flex.storage.private_ray_dir``).

Only path arithmetic: nothing here touches the disk, so any process (a trial, a notebook, export) agrees on the
layout without importing torch, Ray or pyarrow.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StorageLayout", "HISTORY_DIR", "MERGE_DIR", "WEIGHTS_DIR", "EXPERIMENTS_DIR", "CLAIMS_DIR",
           "RUNNING_DIR", "RAY_DIR", "TRIAL_FILE", "TRIAL_STATE_FILE", "ROW_SUFFIX", "COMPACTED_LEVEL",
           "trial_file_name", "merged_file_name", "file_level", "is_row_file"]

HISTORY_DIR = "_history"
MERGE_DIR = "_merge"
WEIGHTS_DIR = "_weights"
EXPERIMENTS_DIR = "_experiments"
CLAIMS_DIR = "_claims"
RUNNING_DIR = "_running"
#: where older versions put Ray's files inside the storage; never written or read now
RAY_DIR = "_ray"
#: in a trial's scratch folder: its config, sampler params and start time (JSON)
TRIAL_FILE = "trial.json"
#: in a trial's scratch folder: its last epoch's state (``nas_flex.train.run_trial``'s checkpoint)
TRIAL_STATE_FILE = "trial_state.pt"
ROW_SUFFIX = ".parquet"
#: compact()'s output: never merged again automatically
COMPACTED_LEVEL = 99

_CLEAN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
# merged files: never a "--" in the name, which every trial's row file has
_MERGED = re.compile(r"(?:merged-(\d{1,2})|compacted)-[0-9a-f]{32}\.parquet")


def trial_file_name(experiment: str, trial_id: str) -> str:
    """The file name of a trial's row: ``<experiment>--<trial_id>.parquet``.

    Names with characters outside ``[A-Za-z0-9_.+-]``, a ``--``, a trailing ``-`` or over 100 characters are
    sanitised and get a ``~<hash>`` suffix of the exact pair, so distinct pairs never share a file.

    Example:
        >>> trial_file_name("digits", "t0001")
        'digits--t0001.parquet'
    """
    if all(_CLEAN.fullmatch(s) and "--" not in s and not s.endswith("-") for s in (experiment, trial_id)):
        return f"{experiment}--{trial_id}{ROW_SUFFIX}"
    digest = hashlib.sha256(json.dumps([experiment, trial_id]).encode()).hexdigest()[:12]

    def safe(s: str) -> str:
        s = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9_.+-]", "_", s))[:80].strip("-")
        return s if s[:1].isalnum() else "x" + s

    return f"{safe(experiment)}--{safe(trial_id)}~{digest}{ROW_SUFFIX}"


def merged_file_name(level: int) -> str:
    """A fresh name for a merged file of ``level`` (``COMPACTED_LEVEL``: compact()'s output)."""
    prefix = "compacted" if level == COMPACTED_LEVEL else f"merged-{level}"
    return f"{prefix}-{uuid.uuid4().hex}{ROW_SUFFIX}"


def file_level(name: str) -> int:
    """0 for a trial's row file, the level of a merged file, ``COMPACTED_LEVEL`` for compact()'s output."""
    m = _MERGED.fullmatch(name)
    if m is None:
        return 0
    return COMPACTED_LEVEL if m.group(1) is None else int(m.group(1))


def is_row_file(name: str) -> bool:
    """A visible Parquet file of a leaderboard directory (a row file or a merged one)."""
    return name.endswith(ROW_SUFFIX) and not name.startswith((".", "_"))


@dataclass(frozen=True)
class StorageLayout:
    """The paths of a storage folder (see the module docstring for the tree).

    Example:
        >>> layout = StorageLayout("runs/digits")
        >>> layout.weights("e1", "t0001").as_posix()
        'runs/digits/_weights/e1--t0001.pt'
    """

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def history_dir(self) -> Path:
        """The per-epoch tables."""
        return self.root / HISTORY_DIR

    @property
    def merge_dir(self) -> Path:
        """The merge lock and journal."""
        return self.root / MERGE_DIR

    @property
    def experiments_dir(self) -> Path:
        """One JSON per experiment."""
        return self.root / EXPERIMENTS_DIR

    def row(self, experiment: str, trial_id: str) -> Path:
        """A trial's row file."""
        return self.root / trial_file_name(experiment, trial_id)

    def weights(self, experiment: str, trial_id: str) -> Path:
        """A search trial's kept trained weights (a state_dict that ``torch.load(..., weights_only=True)`` reads)."""
        return self.root / WEIGHTS_DIR / f"{experiment}--{trial_id}.pt"

    def experiment_file(self, experiment: str) -> Path:
        """An experiment's settings: what ``resume`` continues."""
        return self.experiments_dir / f"{experiment}.json"

    def claims(self, experiment: str) -> Path:
        """The folder of an experiment's claims: one file per trained config key, holding its owner's trial id."""
        return self.root / CLAIMS_DIR / experiment

    def claim(self, experiment: str, config_key: str) -> Path:
        """The claim file of one config of an experiment."""
        return self.claims(experiment) / config_key

    def running_dir(self, experiment: str) -> Path:
        """The scratch folders of an experiment's started, unfinished trials."""
        return self.root / RUNNING_DIR / experiment

    def running(self, experiment: str, trial_id: str) -> Path:
        """A started trial's scratch folder (its ``TRIAL_FILE`` and ``TRIAL_STATE_FILE``)."""
        return self.running_dir(experiment) / trial_id

    def checkpoint(self, experiment: str, trial_id: str) -> Path:
        """A started trial's last-epoch checkpoint (what ``nas_flex.train.run_trial(checkpoint=...)`` writes)."""
        return self.running(experiment, trial_id) / TRIAL_STATE_FILE
