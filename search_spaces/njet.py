"""N-Jet alone: basis order, initial sigma, and pooling including its own safe-subsampling, searched with TPE."""

import runpy
from pathlib import Path

SAMPLER = "tpe"
NUM_SAMPLES = 12

# the main job's backbone, data, width and learning rate (grid_vs_learned.py, beside this file), at this space's
# budget: 8 epochs of batch 64. In a copy of this file kept elsewhere, write BASE out as a dict.
BASE = {**runpy.run_path(str(Path(__file__).with_name("grid_vs_learned.py")))["BASE"], "epochs": 8, "batch_size": 64}


def space(trial):
    return {
        **BASE,
        "conv": "njet",
        "conv_hparams": {
            "order": trial.suggest_int("order", 2, 4),
            "sigma_init": trial.suggest_float("sigma_init", 0.5, 2.0, log=True),
        },
        "pooling": trial.suggest_categorical("pooling", ["max", "safe", "none"]),
    }
