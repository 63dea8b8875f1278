"""FlexConv alone: kernel net, initial mask size, pooling and the mask's learning rate, searched with TPE."""

SAMPLER = "tpe"
NUM_SAMPLES = 12

BASE = {"backbone": "simple", "depth": 4, "width": 16, "dataset": "digits-multiscale", "epochs": 8, "lr": 1e-2}


def space(trial):
    return {
        **BASE,
        "conv": "flexconv",
        "conv_hparams": {
            "kernel_net": trial.suggest_categorical("kernel_net", ["magnet", "mfn_gabor", "siren"]),
            "mask_sigma_init": trial.suggest_float("mask_sigma_init", 0.05, 0.3, log=True),
        },
        "pooling": trial.suggest_categorical("pooling", ["max", "avg", "none"]),
        # None: the mask's own recipe (0.1x the weights' lr, the authors' code); 1.0 overrides it
        "size_lr_factor": trial.suggest_categorical("size_lr_factor", [None, 1.0]),
    }
