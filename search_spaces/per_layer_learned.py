"""The learned-size side of the per-layer study: every learned-size method on the backbone, data and budget of
``per_layer_grid.py``, each trained with its own recipe (``KernelLayer.size_recipe``), pooling per stage chosen from
the same modes, plus N-Jet's safe-subsampling, which sets each stage's subsampling from the learned sigma.

Each (method, pooling plan) is one run; the study (``experiments/grid_vs_learned_study.py``) picks the plans it
trains. ``SAMPLER = "grid"`` enumerates them all (6 methods x 9 plans, plus N-Jet with safe-subsampling: 55).
"""

import runpy
from pathlib import Path

SAMPLER = "grid"

# the main job's backbone, data, width and learning rate (grid_vs_learned.py, beside this file), at this space's
# budget: 6 epochs of batch 64. In a copy of this file kept elsewhere, write BASE out as a dict.
BASE = {**runpy.run_path(str(Path(__file__).with_name("grid_vs_learned.py")))["BASE"], "epochs": 6, "batch_size": 64}

METHODS = ["mixed", "flexconv", "njet", "envelope", "niff", "cfconv"]
POOLINGS = ["max", "avg", "conv"]

#: each method's hyperparameters for this backbone: the same candidate sizes as the grid for the DARTS mixed kernel,
#: the envelope's base grid as large as the grid's largest kernel, and FlexConv's initial mask width of the main job
#: (0.125, about N-Jet's 5 px on these 8-16 px maps; the authors' 0.075 was chosen for 33-px grids: grid_vs_learned.py)
HPARAMS = {"mixed": {"kernel_sizes": [3, 5, 7]}, "flexconv": {"mask_sigma_init": 0.125}}
KERNEL_SIZE = {"envelope": 7}


PLANS = [f"{a},{b}" for a in POOLINGS for b in POOLINGS]


def space(trial):
    method = trial.suggest_categorical("method", METHODS)
    if method == "njet":  # N-Jet may also subsample safely, by its learned sigma (a separate name: other choices)
        plan = trial.suggest_categorical("njet_pooling_plan", [*PLANS, "safe,safe"])
    else:
        plan = trial.suggest_categorical("pooling_plan", PLANS)
    config = {**BASE, "conv": method, "pooling": plan.split(",")}
    if method in HPARAMS:
        config["conv_hparams"] = dict(HPARAMS[method])
    if method in KERNEL_SIZE:
        config["kernel_size"] = KERNEL_SIZE[method]
    return config
