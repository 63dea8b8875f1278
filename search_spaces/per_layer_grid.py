"""The per-layer grid: a kernel size for every convolution and a pooling mode for every stage, plain convolutions.

3 sizes over the 4 convolutions of the simple backbone and 3 poolings over its 2 stages are 81 x 9 = 729
architectures: too many to train exhaustively, so the space is searched (TPE by default; ``--sampler random`` or the
study's random arm for the baseline). This is the grid a learned-size layer should beat: each of them learns a size
per layer in one run. ``search_spaces/per_layer_learned.py`` is the matching learned-size space (same backbone, data
and budget); ``experiments/grid_vs_learned_study.py`` runs both at equal compute.
"""

import runpy
from pathlib import Path

SAMPLER = "tpe"
NUM_SAMPLES = 24  # of 729 architectures; the study compares this budget with one learned run per method

# the main job's backbone, data, width and learning rate (grid_vs_learned.py, beside this file), at this space's
# budget: 6 epochs of batch 64. In a copy of this file kept elsewhere, write BASE out as a dict.
BASE = {**runpy.run_path(str(Path(__file__).with_name("grid_vs_learned.py")))["BASE"], "epochs": 6, "batch_size": 64}

KERNEL_SIZES = [3, 5, 7]
POOLINGS = ["max", "avg", "conv"]
DEPTH = 4  # convolutions of the simple backbone; a pooling step after every second one


def space(trial):
    sizes = [trial.suggest_categorical(f"kernel_size_{i}", KERNEL_SIZES) for i in range(DEPTH)]
    pools = [trial.suggest_categorical(f"pooling_{s}", POOLINGS) for s in range(DEPTH // 2)]
    return {**BASE, "conv": "conv", "kernel_size": sizes, "pooling": pools}
