"""Where each learned size started and where it went: ``size_changes(frame)``, one row per (trial, layer).

A leaderboard row keeps the size records of every learned-size layer twice, at initialisation
(``initial_sizes_json``, the history's epoch 0) and after training (``learned_sizes_json``). ``size_changes`` puts
them side by side, so "N-Jet's first sigma moved from 1.00 to 1.31" reads off one row; ``format_size_changes``
prints them. pandas and the standard library only (the leaderboard package never imports torch).

Example:
    >>> import pandas as pd
    >>> init = '[{"name": "features.0", "kind": "njet", "height": 5.0, "width": 5.0, "sigma": 1.0}]'
    >>> done = '[{"name": "features.0", "kind": "njet", "height": 7.0, "width": 7.0, "sigma": 1.25}]'
    >>> frame = pd.DataFrame({"trial_id": ["t1"], "initial_sizes_json": [init], "learned_sizes_json": [done]})
    >>> row = size_changes(frame).iloc[0]
    >>> row["parameter"], float(row["init_value"]), float(row["learned_value"]), round(float(row["change"]), 2)
    ('sigma', 1.0, 1.25, 0.25)
    >>> print(format_size_changes(size_changes(frame)))
      features.0       njet       5.00 x  5.00 ->  7.00 x  7.00 px   sigma 1 -> 1.25 (+25%)
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from nas_flex.errors import LeaderboardSchemaError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["size_changes", "format_size_changes", "learns_size", "fixed_size_methods", "SIZE_PARAMETERS"]

#: for rows written before size records named their headline parameter (``size_parameter``, from the layer's
#: ``KernelLayer.size_parameter_names``): the raw size parameter that sums up a built-in layer, first match wins
SIZE_PARAMETERS = ("normalized_entropy", "sigma", "mask_sigma", "mask_sigma_h", "mass_height")

_RECORD_KEYS = ("name", "kind", "height", "width")
_ID_COLUMNS = ("experiment", "trial_id", "params_conv", "params_pooling", "metrics_val_acc")


def _records(text: Any, column: str, where: str) -> list[dict[str, Any]]:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    try:
        records = json.loads(text)
    except (TypeError, ValueError) as err:
        raise LeaderboardSchemaError(f"{column} of {where} is not JSON text: {err}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise LeaderboardSchemaError(f"{column} of {where} must be a JSON list of size records (dicts)")
    return records


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numeric raw size parameters (lists, strings and flags left out)."""
    return {k: float(v) for k, v in record.items()
            if k not in _RECORD_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _layer_change(depth: int, rec: dict[str, Any], init: dict[str, Any]) -> dict[str, Any]:
    """One layer's ``size_changes`` row (without the trial's identity columns): its learned record ``rec`` against
    its record at initialisation ``init`` ({} when there is none)."""
    row: dict[str, Any] = dict(depth=depth, layer=rec.get("name"), kind=rec.get("kind"),
                               init_height=init.get("height", math.nan), init_width=init.get("width", math.nan),
                               height=rec.get("height", math.nan), width=rec.get("width", math.nan))
    now, before = _scalars(rec), _scalars(init)
    name = rec.get("size_parameter") if rec.get("size_parameter") in now else None
    name = name or next((k for k in SIZE_PARAMETERS if k in now), None)  # rows written before size_parameter
    row["parameter"] = name
    row["init_value"] = before.get(name, math.nan) if name else math.nan
    row["learned_value"] = now.get(name, math.nan) if name else math.nan
    row["change"] = row["learned_value"] / row["init_value"] - 1.0 if row["init_value"] != 0 else math.nan
    row["at_bound"] = rec.get("at_bound") or None
    for key in sorted(set(now) | set(before)):
        row[f"init_{key}"] = before.get(key, math.nan)
        row[f"learned_{key}"] = now.get(key, math.nan)
    return row


def size_changes(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, learned-size layer): the size and the raw size parameters at init and after training.

    Args:
        frame: leaderboard rows (``Leaderboard.to_pandas()``, ``pd.read_parquet(folder)`` or a filtered part)
            with ``learned_sizes_json`` and, for the initial values, ``initial_sizes_json`` (rows written before
            it existed get NaN there).

    Returns:
        A DataFrame with the frame's identity columns that it has (experiment, trial_id, params_conv,
        params_pooling, metrics_val_acc), then ``depth`` (0-based index among the trial's learned-size layers),
        ``layer``, ``kind``, ``init_height``, ``init_width``, ``height``, ``width`` (pixels), ``parameter`` (the
        raw size parameter that sums the layer up: the record's ``size_parameter``), ``init_value``, ``learned_value``,
        ``change`` (learned / init - 1), ``at_bound`` (where training left the size at a bound: "schedule" (the
        furthest its optimizer could move it in the trial's steps), "input" (the kernel spans the feature map),
        "range" (the layer's own clip holds it at a limit), those that hold joined by "+", or None;
        ``nas_flex.train.bounds``), and ``init_<key>`` / ``learned_<key>`` for every
        numeric raw size parameter the records hold (``sigma_min``, ``mask_mean_h``, ``entropy``, ...). A trial
        with no learned-size layer gets no row.

    Raises:
        LeaderboardSchemaError: ``learned_sizes_json`` is missing, or a record is not JSON of size records.
    """
    import pandas as pd

    if "learned_sizes_json" not in frame.columns:
        raise LeaderboardSchemaError(
            "size_changes needs the leaderboard's `learned_sizes_json` column; pass rows read from a leaderboard "
            f"(columns given: {', '.join(map(str, frame.columns[:8]))}...)"
        )
    ids = [c for c in _ID_COLUMNS if c in frame.columns]
    rows: list[dict[str, Any]] = []
    for index, trial in frame.iterrows():
        where = f"trial {trial['trial_id']}" if "trial_id" in frame.columns else f"row {index}"
        learned = _records(trial["learned_sizes_json"], "learned_sizes_json", where)
        initial = _records(trial.get("initial_sizes_json"), "initial_sizes_json", where)
        by_name = {r.get("name"): r for r in initial}
        for depth, rec in enumerate(learned):
            rows.append({**{c: trial[c] for c in ids}, **_layer_change(depth, rec, by_name.get(rec.get("name"), {}))})
    base = [*ids, "depth", "layer", "kind", "init_height", "init_width", "height", "width", "parameter",
            "init_value", "learned_value", "change", "at_bound"]
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=base)
    extra = [c for c in out.columns if c not in base]
    return out[base + extra]


def learns_size(frame: pd.DataFrame) -> pd.Series:
    """Per row: whether the trial's model has a layer that learns its kernel size (its ``learned_sizes_json``
    holds a size record whose ``learns_size`` is not False); missing (``pd.NA``) where the row has no records (a
    trial that failed before its model was measured).

    Reads only what each trial wrote into its row, so a layer registered by a user is classified like a built-in.
    """
    import pandas as pd

    if "learned_sizes_json" not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="boolean")
    values = []
    for index, text in frame["learned_sizes_json"].items():
        if text is None or (isinstance(text, float) and math.isnan(text)):
            values.append(pd.NA)
            continue
        records = _records(text, "learned_sizes_json", f"row {index}")
        values.append(any(r.get("learns_size", True) is not False for r in records))
    return pd.Series(values, index=frame.index, dtype="boolean")


def fixed_size_methods(frame: pd.DataFrame, column: str = "params_conv") -> set[str]:
    """The methods (values of ``column``) whose trials learn no kernel size: the grid baselines (``conv``, or any
    fixed-size layer a user registered). A method counts when at least one of its rows says so and none says
    otherwise (``learns_size``); a method none of whose rows has size records counts as learned."""
    if column not in frame.columns or frame.empty:
        return set()
    learned = learns_size(frame)
    out = set()
    for method, flags in learned.groupby(frame[column], dropna=True):
        known = flags.dropna()
        if len(known) and not known.any():
            out.add(str(method))
    return out


def _num(v: Any, fmt: str) -> str:
    return "?" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def format_size_changes(changes: pd.DataFrame, *, indent: str = "  ") -> str:
    """``size_changes`` rows as text lines: layer, kind, size init -> learned (px), parameter init -> learned.

    FlexConv's 2-D masks show both sides' sigma; the envelope its smallest and largest aperture too. A size that
    ended at a bound is marked ``[at bound: schedule]`` / ``[at bound: input]`` (see ``size_changes``).
    """
    lines = []
    for _, r in changes.iterrows():
        size = (f"{_num(r['init_height'], '5.2f')} x {_num(r['init_width'], '5.2f')} -> "
                f"{_num(r['height'], '5.2f')} x {_num(r['width'], '5.2f')} px")
        params = []
        keys = [r["parameter"]] if r["parameter"] else []
        if r["parameter"] == "mask_sigma_h":
            keys.append("mask_sigma_w")
        if r["parameter"] == "sigma" and not _isnan(r.get("learned_sigma_min")):
            keys += ["sigma_min", "sigma_max"]
        for key in keys:
            a, b = r.get(f"init_{key}", math.nan), r.get(f"learned_{key}", math.nan)
            change = "" if _isnan(a) or _isnan(b) or a == 0 else f" ({b / a - 1:+.0%})"
            params.append(f"{key} {_num(a, '.3g')} -> {_num(b, '.3g')}{change}")
        bound = r.get("at_bound")
        mark = f"  [at bound: {bound}]" if isinstance(bound, str) and bound else ""
        lines.append(f"{indent}{str(r['layer']):<16} {str(r['kind']):<9} {size}   {', '.join(params)}{mark}".rstrip())
    return "\n".join(lines)


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
