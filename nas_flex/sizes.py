"""``nas_flex.learned_sizes(model)``: what every learned-size layer in a model has learned, as a DataFrame."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

__all__ = ["learned_sizes", "learned_size_records"]

_BASE_COLUMNS = ["name", "kind", "height", "width"]


def learned_size_records(model: nn.Module) -> list[dict[str, Any]]:
    """One plain dict per learned-size layer: name, kind, height, width, the layer's raw size parameters
    (``size_record``), and ``size_parameter`` (the headline one's key) and ``learns_size`` (``size_summary``)."""
    from nas_flex.layers.base import KernelLayer

    rows = []
    for name, module in model.named_modules():
        if isinstance(module, KernelLayer) and module.learns_size:
            h, w = module.effective_kernel_size
            rows.append({"name": name or type(module).__name__, "kind": module.kind, "height": h, "width": w,
                         **module.size_record(), **module.size_summary()})
    return rows


def learned_sizes(model: nn.Module) -> pd.DataFrame:
    """One row per learned-size layer of ``model``, in module order.

    Columns: name (the module path), kind (registry name), height and width (the effective kernel size in pixels
    of the grid each layer last saw), then the layers' raw size parameters (``sigma`` for N-Jet and envelope layers,
    mask means and sigmas for FlexConv, argmax and entropy for mixed, ...); a column is NaN for layers that do not
    have it. Fixed-size layers (``conv``, plain ``nn.Conv2d``) get no row.

    Example:
        >>> import torch
        >>> from nas_flex.layers import build
        >>> model = torch.nn.Sequential(build("conv", 3, 8), build("mixed", 8, 8))
        >>> list(learned_sizes(model).columns[:4])
        ['name', 'kind', 'height', 'width']
    """
    import pandas as pd

    rows = learned_size_records(model)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=_BASE_COLUMNS)
    return df
