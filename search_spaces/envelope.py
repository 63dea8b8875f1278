"""The adaptive Gaussian envelope (ACONV) alone: base grid n and the initial aperture range, searched with TPE."""

import runpy
from pathlib import Path

SAMPLER = "tpe"
NUM_SAMPLES = 12

# the main job's backbone, data, width and learning rate (grid_vs_learned.py, beside this file), at this space's
# budget: 8 epochs of batch 64. In a copy of this file kept elsewhere, write BASE out as a dict.
BASE = {**runpy.run_path(str(Path(__file__).with_name("grid_vs_learned.py")))["BASE"], "epochs": 8, "batch_size": 64}


def space(trial):
    low = trial.suggest_float("sigma_low", 0.05, 0.3)
    return {
        **BASE,
        "conv": "envelope",
        "kernel_size": trial.suggest_categorical("kernel_size", [5, 7]),
        "conv_hparams": {"sigma_init": [low, low + trial.suggest_float("sigma_span", 0.0, 0.5)]},
        "pooling": trial.suggest_categorical("pooling", ["max", "avg"]),
    }
