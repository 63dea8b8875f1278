"""Where everything lives in a search's storage folder: the one place that names its paths.

``nas_flex.search(..., storage=PATH)`` writes, and export, resume and the leaderboard read::

    PATH/<experiment>--<trial_id>.parquet     one finished trial's row (pandas.read_parquet(PATH) reads exactly the
                                              row files: names that start with "_" or "." are skipped)
    PATH/merged-*.parquet, compacted-*.parquet   many trials' rows (nas_flex.leaderboard.merge)
    PATH/_history/                            the per-epoch rows, the same file names
    PATH/_merge/                              the merge lock and journal
    PATH/_weights/<experiment>--<trial_id>.pt each search trial's trained state_dict (weights_only-loadable)
    PATH/_experiments/<experiment>.json       an experiment's settings (what --resume continues)
    PATH/_claims/<experiment>/<config_key>    one file per trained architecture, holding the owner trial's id
                                              (dedupe of identical configs)
    PATH/_running/<experiment>/<trial_id>/    a started trial's scratch folder: trial.json (its config and sampler
                                              params) and trial_state.pt (its last epoch); removed once its row is
                                              written, kept for a retry or --resume otherwise
    PATH/_ray/<run>/                          Ray Tune's own files (written by Ray, never read back)

Only path arithmetic: nothing here touches the disk, so any process (a trial, a notebook, export) agrees on the
layout without importing torch or Ray.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StorageLayout", "HISTORY_DIR", "MERGE_DIR", "WEIGHTS_DIR", "EXPERIMENTS_DIR", "CLAIMS_DIR",
           "RUNNING_DIR", "RAY_DIR", "TRIAL_FILE", "TRIAL_STATE_FILE"]

HISTORY_DIR = "_history"
MERGE_DIR = "_merge"
WEIGHTS_DIR = "_weights"
EXPERIMENTS_DIR = "_experiments"
CLAIMS_DIR = "_claims"
RUNNING_DIR = "_running"
RAY_DIR = "_ray"
#: in a trial's scratch folder: its config, sampler params and start time (JSON)
TRIAL_FILE = "trial.json"
#: in a trial's scratch folder: its last epoch's state (``nas_flex.train.run_trial``'s checkpoint)
TRIAL_STATE_FILE = "trial_state.pt"


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

    @property
    def ray_dir(self) -> Path:
        """Ray Tune's ``storage_path`` (never read back by nas_flex)."""
        return self.root / RAY_DIR

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
