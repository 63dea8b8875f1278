"""The trial's optimizers: the weights' optimizer, and the size parameters trained by each layer's own recipe.

Every learned-size layer declares how its size parameters are trained (``KernelLayer.size_recipe``, with the paper
or code it comes from): N-Jet's sigma and the envelope's apertures with the weights' optimizer and learning rate,
FlexConv's mask at 0.1x, the DARTS alphas with their own Adam (lr 3e-4, betas (0.5, 0.999), weight decay 1e-3).
One global factor cannot serve them all: at FlexConv's 0.1x an N-Jet sigma barely moves in a short run, and at 1x a
FlexConv mask collapses. ``size_lr_factor`` in a trial config overrides every recipe (all size parameters in the
weights' optimizer at ``lr x factor``).

``size_update="bilevel"`` is DARTS's first-order bilevel update: the size parameters get their own optimizer(s) and
step on batches of a held-out part of the training split, the weights on the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nas_flex.layers.base import KernelLayer, SizeRecipe

__all__ = ["TrialOptimizers", "make_optimizers", "layer_recipes", "param_groups"]

Schedule = Callable[[int], float]


def _constant(_: int) -> float:
    return 1.0


def layer_recipes(model: nn.Module, override: float | None = None) -> list[tuple[str, SizeRecipe, list[nn.Parameter]]]:
    """(kind, recipe, size parameters) per layer kind with trainable size parameters, in module order.

    ``override``: a trial config's ``size_lr_factor``; not None replaces every recipe by the weights' optimizer at
    ``lr x override``.
    """
    out: dict[tuple[str, SizeRecipe], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        if not isinstance(module, KernelLayer):
            continue
        recipe = module.size_recipe
        if override is not None:
            recipe = SizeRecipe(source="trial config size_lr_factor (overrides the layer's recipe)",
                                lr_factor=float(override))
        for p in module.size_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.setdefault((module.kind or type(module).__name__, recipe), []).append(p)
    return [(kind, recipe, params) for (kind, recipe), params in out.items()]


@dataclass
class TrialOptimizers:
    """The optimizers of one trial and their schedulers, stepped together.

    ``weights`` holds the ordinary weights (and, with ``size_update="joint"``, the size parameters of the recipes
    that share it); ``size`` holds the rest of the size parameters (own-Adam recipes, and every size parameter in
    bilevel mode). ``recipes`` is what the leaderboard records: per layer kind, how its size parameters trained.
    """

    weights: torch.optim.Optimizer
    size: list[torch.optim.Optimizer] = field(default_factory=list)
    schedulers: list[torch.optim.lr_scheduler.LambdaLR] = field(default_factory=list)
    recipes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def all(self) -> list[torch.optim.Optimizer]:
        return [self.weights, *self.size]

    def zero_grad(self) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def step(self, scaler: torch.amp.GradScaler, which: str = "all") -> None:
        """Step "all", only the "weights" optimizer, or only the "size" ones, through the AMP scaler."""
        chosen = {"all": self.all, "weights": [self.weights], "size": self.size}[which]
        for opt in chosen:
            scaler.step(opt)
        scaler.update()

    def schedule_step(self) -> None:
        for sched in self.schedulers:
            sched.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.all],
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for opt, s in zip(self.all, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        for sched, s in zip(self.schedulers, state["schedulers"], strict=True):
            sched.load_state_dict(s)


def _new_optimizer(kind: str, groups: list[dict[str, Any]], lr: float, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.Adam(groups, lr=lr, betas=betas)


def make_optimizers(model: nn.Module, cfg: dict[str, Any], schedule: Schedule) -> TrialOptimizers:
    """The weights' optimizer (Adam or SGD with Nesterov momentum, ``cfg['lr']``, ``cfg['weight_decay']``) and the
    size parameters' groups and optimizers by their layers' recipes (module docstring).

    Args:
        model: the trial's model.
        cfg: a resolved trial config (``optimizer``, ``lr``, ``weight_decay``, ``size_lr_factor``, ``size_update``).
        schedule: the learning-rate multiplier per step (warm-up + cosine), applied to the weights and to "shared"
            recipes (except those with ``schedule="constant"``); own-Adam recipes keep a constant learning rate
            (DARTS).
    """
    bilevel = cfg["size_update"] == "bilevel"
    lr = cfg["lr"]
    size_ids: set[int] = set()
    weight_groups = []
    weight_lambdas: list[Schedule] = [schedule]
    size_opts: list[tuple[torch.optim.Optimizer, list[Schedule]]] = []
    shared_size_groups: list[dict[str, Any]] = []  # bilevel: the shared recipes' groups, in one optimizer
    shared_lambdas: list[Schedule] = []
    recipes = []
    for kind, recipe, params in layer_recipes(model, cfg["size_lr_factor"]):
        size_ids.update(id(p) for p in params)
        record = {"kind": kind, **recipe.describe(), "update": cfg["size_update"]}
        if recipe.optimizer == "shared":
            group = {"params": params, "lr": lr * recipe.lr_factor, "weight_decay": recipe.weight_decay,
                     "name": f"size:{kind}"}
            own = _constant if recipe.schedule == "constant" else schedule
            (shared_size_groups if bilevel else weight_groups).append(group)
            (shared_lambdas if bilevel else weight_lambdas).append(own)
            record.update(lr=lr * recipe.lr_factor, optimizer=cfg["optimizer"],
                          schedule="constant" if recipe.schedule == "constant" else "warmup_cosine")
        else:
            group = {"params": params, "lr": recipe.lr, "weight_decay": recipe.weight_decay, "name": f"size:{kind}"}
            size_opts.append((torch.optim.Adam([group], lr=recipe.lr, betas=recipe.betas), [_constant]))
            record.update(schedule="constant")
        recipes.append(record)
    if shared_size_groups:
        opt = _new_optimizer(cfg["optimizer"], shared_size_groups, lr)
        size_opts.append((opt, shared_lambdas))
    other = [p for p in model.parameters() if id(p) not in size_ids and p.requires_grad]
    weight_groups.insert(0, {"params": other, "lr": lr, "weight_decay": cfg["weight_decay"], "name": "weights"})
    weights = _new_optimizer(cfg["optimizer"], weight_groups, lr)
    LambdaLR = torch.optim.lr_scheduler.LambdaLR  # noqa: N806
    schedulers = [LambdaLR(weights, weight_lambdas)] + [LambdaLR(o, lam) for o, lam in size_opts]
    return TrialOptimizers(weights=weights, size=[o for o, _ in size_opts], schedulers=schedulers, recipes=recipes)


def param_groups(model: nn.Module, lr: float, *, weight_decay: float = 0.0,
                 size_lr_factor: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Parameter groups of one optimizer for a model trained by a user's own loop, and the recipes they follow.

    The ordinary weights form the group ``"weights"`` at ``lr`` with ``weight_decay``; each layer kind's size
    parameters form a group ``"size:<kind>"`` by its recipe (``layer_recipes``): a shared recipe at
    ``lr x lr_factor``, an own-Adam recipe (DARTS) at its own constant ``lr`` with its ``betas`` (an Adam reads them;
    another optimizer keeps only the learning rate). Size parameters never get ``weight_decay``, only their recipe's.

    Args:
        model: the model (any ``nn.Module``; its nas_flex layers are found wherever they sit).
        lr: the weights' learning rate.
        weight_decay: L2 on the ordinary weights.
        size_lr_factor: None: each layer's recipe; a number: every size parameter at ``lr x size_lr_factor``.

    Returns:
        (groups for ``torch.optim.X(groups, lr=lr)``, one record per layer kind: how its size parameters train).

    Example:
        >>> from nas_flex.layers import build
        >>> model = nn.Sequential(build("njet", 1, 4), build("flexconv", 4, 4))
        >>> groups, _ = param_groups(model, lr=0.01)
        >>> [g["name"] for g in groups]
        ['weights', 'size:njet', 'size:flexconv']
    """
    size_ids: set[int] = set()
    size_groups: list[dict[str, Any]] = []
    recipes: list[dict[str, Any]] = []
    for kind, recipe, params in layer_recipes(model, size_lr_factor):
        size_ids.update(id(p) for p in params)
        group: dict[str, Any] = {"params": params, "weight_decay": recipe.weight_decay, "name": f"size:{kind}"}
        record = {"kind": kind, **recipe.describe(), "update": "joint", "schedule": "the trainable's own"}
        if recipe.optimizer == "shared":
            group["lr"] = record["lr"] = lr * recipe.lr_factor
            record["optimizer"] = "the trainable's own"
        else:
            group.update(lr=recipe.lr, betas=recipe.betas)
        size_groups.append(group)
        recipes.append(record)
    weights = [p for p in model.parameters() if id(p) not in size_ids and p.requires_grad]
    return [{"params": weights, "lr": lr, "weight_decay": weight_decay, "name": "weights"}, *size_groups], recipes
