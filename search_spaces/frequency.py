"""The frequency-domain layers, NIFF and CF-Conv, with their main options (exhaustive)."""

import runpy
from pathlib import Path

SAMPLER = "grid"

# the main job's backbone, data, width and learning rate (grid_vs_learned.py, beside this file), at this space's
# budget: 8 epochs of batch 64. In a copy of this file kept elsewhere, write BASE out as a dict.
BASE = {**runpy.run_path(str(Path(__file__).with_name("grid_vs_learned.py")))["BASE"], "epochs": 8, "batch_size": 64}


def space(trial):
    method = trial.suggest_categorical("method", ["niff", "cfconv"])
    if method == "niff":
        hp = {"mode": trial.suggest_categorical("mode", ["separable", "full"])}
    else:
        hp = {"sampled_positions": trial.suggest_categorical("sampled_positions", [4096, 32768])}
    return {**BASE, "conv": method, "conv_hparams": hp, "pooling": "max"}
