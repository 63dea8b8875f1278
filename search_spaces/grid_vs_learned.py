"""Grid vs learned: the discrete kernel-size grid, the DARTS-style mixed kernel and every learned-size layer, on the
same backbone, data, pooling and training budget (exhaustive, so every method gets the same trials), each
configuration under 3 seeds.

The headline comparison of nas_flex; `make search` runs it on digits-multiscale (digits pasted at 1-3x scale).
"""

SAMPLER = "grid"

# every configuration is trained under 3 seeds (derived from the experiment's seed), one row each, and every ranking
# printed groups them: mean +- sd, a 95 % t interval, and a paired t-test against the grid's best. To stay near 15
# minutes on 2 idle cores with 3 seeds, one pooling (max) for every method, the grid included: 9 configurations x 3
# seeds = 27 trials (the single-seed job ran 18: both poolings; in it max was within noise of avg for most methods)
REPEATS = 3
POOLING = "max"

# 10 epochs at batch 32 (450 steps): at 6 epochs of batch 64 (138 steps) FlexConv trailed the best grid point by 23
# points (0.652 vs 0.886), at 10 x 32 by a few (experiments/main_job_sizes.py; docs/results.md)
# val_every 10: the job reads each run's final accuracy, so it validates once, after the last epoch, instead of after
# every epoch (8 % of a trial's time); the sizes at initialisation are still recorded
BASE = {"backbone": "simple", "depth": 4, "width": 16, "dataset": "digits-multiscale", "epochs": 10, "batch_size": 32,
        "lr": 1e-2, "val_every": 10}

# cfconv runs the layer's default, one MLP per channel pair (the paper's Phi(H, W)): the paper's recommended joint MLP
# collapses a layer's output channels at this width and stays near chance here (docs/results.md, "NIFF and CF-Conv at
# the main job's config"; experiments/frequency_layers.py)
METHODS = ["conv", "mixed", "flexconv", "njet", "envelope", "niff", "cfconv"]


def space(trial):
    method = trial.suggest_categorical("method", METHODS)
    config = {**BASE, "conv": method, "pooling": POOLING}
    if method == "conv":  # the grid: kernel size is a searched choice
        config["kernel_size"] = trial.suggest_categorical("kernel_size", [3, 5, 7])
    elif method == "mixed":  # the differentiable choice among the same sizes
        config["conv_hparams"] = {"kernel_sizes": [3, 5, 7]}
    elif method == "envelope":  # ACONV: the envelope shrinks inside a 7x7 base grid
        config["kernel_size"] = 7
    elif method == "flexconv":
        # every learned-size layer starts near 5 px, like N-Jet's sigma 1.0: the authors' mask sigma 0.075 was chosen
        # for 33-px grids and is about 1 px on these 8-16 px feature maps, where it learns far more slowly
        config["conv_hparams"] = {"mask_sigma_init": 0.125}
    return config
