"""Which learned sizes ended at a bound: the furthest their optimizer could move them, or the feature map's side.

A learned size that stops at a bound says nothing about where the data wants it. Three bounds are checked per
learned-size layer at the end of a trial, and the layer's size record gets ``at_bound`` (the marks that hold, joined
by "+" in the order below: "schedule", "input", "range", "schedule+range", ..., or None) and ``budget_used`` (a
float, or None where no budget applies):

* **schedule**: under Adam a parameter moves by about its learning rate per step at most (the step is
  lr * m_hat / (sqrt(v_hat) + eps), and |m_hat| / sqrt(v_hat) is 1 when the gradient keeps its sign, less when it
  does not), so after the trial's steps each raw size parameter can be at most ``budget`` = the sum of the
  learning rates applied to it (warm-up and cosine included) away from its initial value. ``budget_used`` is the
  largest |final - initial| over the layer's size parameters' elements divided by that sum; at
  ``1 - TOLERANCE`` or more the layer is marked "schedule". What the budget means for the size depends on the
  parameterisation:

  - log-parameterised scales (N-Jet's ``log_sigma``): sigma ends within [sigma_0 e^-budget, sigma_0 e^budget],
    e.g. a cosine schedule at peak 1e-2 over 276 steps (budget about 1.4) caps sigma at about 4x its start;
  - directly parameterised sizes (FlexConv's mask sigma and mean on the [-1, 1] grid, the envelope's apertures on
    its [0, 1] grid): |Delta| <= budget in the parameter's own unit, so at FlexConv's 0.1x the mask sigma moves by
    at most a tenth of what the weights' learning rate would allow;
  - mixing weights (DARTS alphas): |Delta alpha| <= budget per logit, so the softmax can shift by a factor
    of at most e^(2 budget) between two candidates.

  SGD has no such bound (its step scales with the gradient): layers trained by SGD get ``budget_used`` None and are
  never marked "schedule".
* **input**: the layer's kernel spans the whole feature map it last saw in height or width (N-Jet's side capped at
  the map, a FlexConv mask cropped to the full grid, a frequency layer whose kernel mass fills the map): the size
  cannot grow further where it matters.
* **range**: the layer's own clip holds a size parameter at a limit of its declared range
  (``KernelLayer.size_ranges()``: the envelope's apertures in [1/n, n], N-Jet's sigma in ``SIGMA_BOUNDS``,
  FlexConv's mask width in [SIGMA_MIN, SIGMA_MAX]; a user layer declares its own). Any entry
  (e.g. one filter's aperture) within ``RANGE_TOLERANCE`` of ``low`` or ``high``, or past it, marks the layer. Only
  the final value counts, also for an entry that started on the clip (the envelope's smallest initial apertures,
  0.1 clipped to 1/7) and never left it: the clip passes the gradient straight through, so any step that pushed it
  inwards would have moved it off, and one still there at the end is held by the range, not placed by the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nas_flex.layers.base import KernelLayer

__all__ = ["TOLERANCE", "RANGE_TOLERANCE", "size_parameter_start", "travel_budgets", "mark_bounds"]

#: a size within this share of its travel budget (10 %) counts as stopped by the schedule
TOLERANCE = 0.1
#: a size parameter within this share of a range limit's magnitude (0.1 %) counts as held at it: a clip sets it to
#: the limit exactly, up to the parameter's float precision
RANGE_TOLERANCE = 1e-3

_ADAM = (torch.optim.Adam, torch.optim.AdamW)


def _layers(model: nn.Module) -> dict[str, KernelLayer]:
    """The learned-size layers by the name ``nas_flex.learned_sizes`` gives them."""
    return {name or type(m).__name__: m for name, m in model.named_modules()
            if isinstance(m, KernelLayer) and m.learns_size}


def size_parameter_start(model: nn.Module) -> dict[str, list[Tensor]]:
    """A copy of every learned-size layer's size parameters now (call before training), by layer name."""
    return {name: [p.detach().clone() for p in layer.size_parameters()] for name, layer in _layers(model).items()}


def travel_budgets(optimizers: Sequence[torch.optim.Optimizer], schedulers: Sequence[Any]) -> dict[int, float | None]:
    """id(parameter) -> the sum of the learning rates its optimizer applied so far (Adam), or None (not Adam).

    Args:
        optimizers: the trial's optimizers.
        schedulers: their ``LambdaLR`` schedulers, one per optimizer in the same order; ``last_epoch`` is the
            number of steps taken (a checkpoint restores it), step t having used ``base_lr * lambda(t)``.
    """
    out: dict[int, float | None] = {}
    for opt, sched in zip(optimizers, schedulers, strict=True):
        steps = int(sched.last_epoch)
        for group, base, lam in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
            budget = base * sum(lam(t) for t in range(steps)) if isinstance(opt, _ADAM) else None
            for p in group["params"]:
                out[id(p)] = budget
    return out


def _budget_used(start: list[Tensor], params: list[nn.Parameter], budgets: Mapping[int, float | None]
                 ) -> float | None:
    """max |final - initial| / budget over the size parameters' elements; None if any has no budget."""
    used = 0.0
    for p0, p in zip(start, params, strict=True):
        budget = budgets.get(id(p))
        if budget is None:
            return None
        moved = float((p.detach().to(p0.device) - p0).abs().max()) if p.numel() else 0.0
        used = max(used, moved / budget if budget > 0 else (0.0 if moved == 0 else float("inf")))
    return used


def _input_capped(layer: KernelLayer) -> bool:
    if layer.last_input_size is None:
        return False
    kh, kw = layer.effective_kernel_size
    h, w = layer.last_input_size
    if layer.spatial_dims == 1:  # a sequence is held as (1, L): only its length can cap the kernel
        return kw >= w
    return kh >= h or kw >= w


def _range_held(layer: KernelLayer) -> bool:
    """Whether any entry of a size parameter with a declared range sits on (or past) one of its limits."""
    for param, low, high in layer.size_ranges():
        v = param.detach().double()
        if v.numel() == 0 or v.is_meta:
            continue
        if bool((v <= low + RANGE_TOLERANCE * abs(low)).any() or (v >= high - RANGE_TOLERANCE * abs(high)).any()):
            return True
    return False


def mark_bounds(records: Sequence[Mapping[str, Any]], model: nn.Module, start: Mapping[str, list[Tensor]],
                budgets: Mapping[int, float | None], *, tolerance: float = TOLERANCE) -> list[dict[str, Any]]:
    """The size records with ``at_bound`` and ``budget_used`` added (module docstring).

    Args:
        records: ``nas_flex.sizes.learned_size_records(model)``.
        model: the trained model.
        start: ``size_parameter_start(model)`` taken before training.
        budgets: ``travel_budgets(...)`` of the trial's optimizers after training.
        tolerance: the share of the budget below which a size still counts as free (default ``TOLERANCE``).

    Returns:
        New dicts; a record whose layer has no start copy gets ``at_bound`` from the input and range checks only.
    """
    layers = _layers(model)
    out = []
    for rec in records:
        layer = layers.get(str(rec.get("name")))
        marks, used = [], None
        if layer is not None:
            params = [p for p in layer.size_parameters()]
            if rec.get("name") in start and params and len(start[rec["name"]]) == len(params):
                used = _budget_used(start[rec["name"]], params, budgets)
            if used is not None and used >= 1.0 - tolerance:
                marks.append("schedule")
            if _input_capped(layer):
                marks.append("input")
            if _range_held(layer):
                marks.append("range")
        out.append({**rec, "at_bound": "+".join(marks) or None, "budget_used": used})
    return out
