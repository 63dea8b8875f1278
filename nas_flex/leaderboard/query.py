"""Leaderboard queries: a small filter language, and the one selection and ranking code behind ``Leaderboard`` and
the ``nas-flex leaderboard`` table.

**The filter language** is parsed, checked against the table's columns and evaluated with pandas operations; it is
never executed as Python (no ``eval``, ``compile``, ``DataFrame.query`` or ``DataFrame.eval``), so a filter string
from anyone can only select rows. It reads like a Python condition::

    params_conv == 'njet' and flops < 1e6
    metrics_val_acc >= 0.9 or not (params_pooling in ['max', 'avg'])
    0.5 < best_val_acc <= 0.99 and isna(flops_fft)
    `params_kernel_size` != None

Grammar (``column`` is a column name, or any name in backticks)::

    condition  := condition 'or' condition | condition 'and' condition | 'not' condition | '(' condition ')'
                | operand (cmp operand)+ | operand ['not'] 'in' '[' literal, ... ']' | 'isna(' column ')'
                | 'notna(' column ')' | column            (a true/false column) | True | False
    cmp        := '==' | '!=' | '<' | '<=' | '>' | '>='  (chained as in Python: 1 < x <= 3)
    operand    := column | literal
    literal    := number | -number | 'string' | "string" | True | False | None

``x == None`` is ``isna(x)`` and ``x != None`` is ``notna(x)``. A comparison with a missing value is unknown, and a
row is kept only where the whole condition is true (SQL's rule: ``not (x > 1)`` keeps no row where x is missing).

Refused, each with a one-line ``QueryError`` raised before anything is read: attribute access (``a.b``), calls
other than ``isna`` / ``notna`` of a column, ``@`` names, subscripts, arithmetic, lambdas, comprehensions, f-strings,
``:=``, names that are not columns (the error lists them, with the closest one).

**Selection** (``select``): the rows of one status (default: completed trials; None for every row) that match the
filter, sorted best first by a metric's direction (ascending for a column without one; missing values last; ties in
(experiment, trial_id) order), the first ``limit`` of them.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nas_flex.errors import QueryError, did_you_mean
from nas_flex.record import TrialStatus

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Filter", "parse_filter", "row_mask", "select", "FUNCTIONS", "MAX_FILTER_LENGTH", "DEFAULT_STATUS"]

#: the longest filter accepted (characters)
MAX_FILTER_LENGTH = 4000
#: the deepest nesting of a filter's conditions
_MAX_DEPTH = 64
#: the status ``select`` keeps unless told otherwise
DEFAULT_STATUS = TrialStatus.COMPLETED
#: the only functions a filter may call, each on one column
FUNCTIONS = ("isna", "notna")

_COMPARE: dict[type, tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne), ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le), ast.Gt: (">", operator.gt), ast.GtE: (">=", operator.ge),
}
_OPS = dict(_COMPARE.values())
_REFUSED = {
    ast.Attribute: "attribute access (a.b)",
    ast.Subscript: "subscripts (a[b])",
    ast.Call: "function calls",
    ast.BinOp: "arithmetic",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions", ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "f-strings", ast.FormattedValue: "f-strings",
    ast.NamedExpr: "assignment (:=)",
    ast.IfExp: "conditional expressions (a if b else c)",
    ast.Starred: "starred expressions",
    ast.Dict: "dicts", ast.Set: "sets",
    ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
}
_PLACEHOLDER = "_nas_flex_column_{}_"

# the parsed form: ("col", name) | ("const", value) | ("cmp", [operands], [ops]) | ("in", negate, operand, values)
# | ("and", [nodes]) | ("or", [nodes]) | ("not", node) | ("call", function, column)
Node = tuple


@dataclass(frozen=True)
class Filter:
    """A parsed, checked filter: ``mask(df)`` gives the rows it keeps.

    Attributes:
        text: the filter as given.
        columns: the columns it reads (what a reader must load).
    """

    text: str
    columns: frozenset[str]
    tree: Node

    def mask(self, df: pd.DataFrame) -> np.ndarray:
        """Where the filter is true on ``df`` (a missing value makes a comparison unknown: not kept)."""
        missing = sorted(self.columns - set(df.columns))
        if missing:
            raise QueryError(f"filter {self.text!r} reads column(s) {missing} that the table does not have")
        result = _condition(self.tree, df, self.text)
        return result.fillna(False).to_numpy(dtype=bool)


def _fail(text: str, why: str) -> QueryError:
    return QueryError(f"bad filter {text!r}: {why}")


def _swap_backticks(text: str) -> tuple[str, dict[str, str]]:
    """``text`` with each backtick-quoted name replaced by a placeholder identifier, and placeholder -> name.

    Also refuses ``@`` outside string literals (pandas' local-variable marker)."""
    out, names, quote, i = [], {}, None, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and i + 1 < len(text):
                out.append(text[i:i + 2])
                i += 2
                continue
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "@":
            raise _fail(text, "'@' names (local variables) are not part of the filter language")
        elif c == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise _fail(text, "a backtick-quoted column name is not closed")
            key = _PLACEHOLDER.format(len(names))
            names[key] = text[i + 1:end]
            out.append(key)
            i = end + 1
            continue
        out.append(c)
        i += 1
    return "".join(out), names


def parse_filter(text: str, columns: Iterable[str]) -> Filter:
    """Parse and check a filter against the valid ``columns``, before any data is read.

    Raises:
        QueryError: bad syntax, a refused construct (named), or an unknown column (the valid ones listed, with the
            closest).

    Example:
        >>> f = parse_filter("params_conv == 'njet' and flops < 1e6", ["params_conv", "flops"])
        >>> sorted(f.columns)
        ['flops', 'params_conv']
    """
    if not isinstance(text, str):
        raise QueryError(f"a filter must be a str, but got {type(text).__name__}")
    if not text.strip():
        raise QueryError("a filter must not be empty")
    if len(text) > MAX_FILTER_LENGTH:
        raise QueryError(f"a filter must be at most {MAX_FILTER_LENGTH} characters, but got {len(text)}")
    source, names = _swap_backticks(text)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        why = getattr(err, "msg", None) or type(err).__name__
        raise _fail(text, f"not a valid expression ({why})") from None
    converter = _Converter(text, list(columns), names)
    node = converter.condition(tree.body, 0)
    return Filter(text, frozenset(converter.used), node)


class _Converter:
    """Turns a whitelisted Python AST into the parsed form, refusing everything else."""

    def __init__(self, text: str, columns: Sequence[str], names: Mapping[str, str]) -> None:
        self.text, self.columns, self.names = text, columns, names
        self.valid = set(columns)
        self.used: set[str] = set()

    def refuse(self, node: ast.AST) -> QueryError:
        what = _REFUSED.get(type(node), type(node).__name__)
        return _fail(self.text, f"{what} not allowed; a filter compares columns with literals, joined by "
                                "and / or / not (see nas_flex.leaderboard.query)")

    def column(self, node: ast.Name) -> Node:
        name = self.names.get(node.id, node.id)
        if name not in self.valid:
            choices = ", ".join(self.columns)
            raise QueryError(f"bad filter {self.text!r}: unknown column {name!r}{did_you_mean(name, self.columns)}; "
                             f"valid columns: {choices}")
        self.used.add(name)
        return ("col", name)

    def literal(self, node: ast.AST) -> Any:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.literal(node.operand)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _fail(self.text, "a sign (+ / -) goes only before a number")
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (bool, int, float, str))):
            return node.value
        if isinstance(node, ast.Constant):
            raise _fail(self.text, f"{type(node.value).__name__} literals are not allowed (numbers, strings, "
                                   "True, False, None are)")
        raise self.refuse(node)

    def operand(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Name):
            return self.column(node)
        if isinstance(node, (ast.Compare, ast.BoolOp)) or (isinstance(node, ast.UnaryOp)
                                                            and isinstance(node.op, ast.Not)):
            raise _fail(self.text, "a comparison's sides are a column or a literal, not a condition")
        return ("const", self.literal(node))

    def condition(self, node: ast.AST, depth: int) -> Node:
        if depth > _MAX_DEPTH:
            raise _fail(self.text, f"nested deeper than {_MAX_DEPTH} levels")
        if isinstance(node, ast.BoolOp):
            kind = "and" if isinstance(node.op, ast.And) else "or"
            return (kind, [self.condition(v, depth + 1) for v in node.values])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ("not", self.condition(node.operand, depth + 1))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Name):
            return self.column(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return ("const", node.value)
        if isinstance(node, (ast.Constant, ast.UnaryOp)):
            raise _fail(self.text, "a literal alone is not a condition; compare a column with it")
        raise self.refuse(node)

    def call(self, node: ast.Call) -> Node:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS or node.keywords or len(node.args) != 1 or not isinstance(node.args[0], ast.Name):
            raise _fail(self.text, f"function calls not allowed, except {' / '.join(FUNCTIONS)} of one column, "
                                   "e.g. isna(flops)")
        return ("call", name, self.column(node.args[0])[1])

    def compare(self, node: ast.Compare) -> Node:
        if len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            values = node.comparators[0]
            if not isinstance(values, (ast.List, ast.Tuple)):
                raise _fail(self.text, "'in' takes a list of literals, e.g. params_conv in ['njet', 'flexconv']")
            return ("in", isinstance(node.ops[0], ast.NotIn), self.operand(node.left),
                    tuple(self.literal(v) for v in values.elts))
        ops = []
        for op in node.ops:
            if isinstance(op, (ast.Is, ast.IsNot)):
                raise _fail(self.text, "'is' / 'is not' not allowed; write == None or != None")
            if type(op) not in _COMPARE:
                raise _fail(self.text, "'in' / 'not in' cannot be chained with other comparisons")
            ops.append(_COMPARE[type(op)][0])
        operands = [self.operand(node.left), *(self.operand(c) for c in node.comparators)]
        for left, op, right in zip(operands, ops, operands[1:]):
            if None in (_const(left), _const(right)) and op not in ("==", "!="):
                raise _fail(self.text, f"None compares only with == or != (missing or not), not {op}")
        return ("cmp", operands, ops)


_NO_CONST = object()


def _const(node: Node) -> Any:
    return node[1] if node[0] == "const" else _NO_CONST


# ------------------------------------------------------------------------------------------------- evaluating
def _boolean(values: Any, index: Any) -> pd.Series:
    import pandas as pd

    if np.isscalar(values) or values is None:
        return pd.Series([bool(values)] * len(index), index=index, dtype="boolean")
    return pd.Series(values, index=index).astype("boolean")


def _missing(node: Node, df: pd.DataFrame) -> np.ndarray:
    if node[0] == "col":
        return df[node[1]].isna().to_numpy(dtype=bool)
    return np.zeros(len(df), dtype=bool)


def _describe(node: Node) -> str:
    return str(node[1]) if node[0] == "col" else repr(node[1])


def _operand(node: Node, df: pd.DataFrame) -> Any:
    return df[node[1]] if node[0] == "col" else node[1]


def _compare(left: Node, op: str, right: Node, df: pd.DataFrame, text: str) -> pd.Series:
    if None in (_const(left), _const(right)):
        other = right if _const(left) is None else left
        missing = _missing(other, df) if other[0] == "col" else np.full(len(df), _const(other) is None)
        return _boolean(missing if op == "==" else ~missing, df.index)
    fn = _OPS[op]
    try:
        result = _boolean(fn(_operand(left, df), _operand(right, df)), df.index)
    except Exception as err:  # noqa: BLE001 - pandas raises TypeError, ValueError, ... for values that do not compare
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise QueryError(f"bad filter {text!r}: cannot compare {_describe(left)} {op} {_describe(right)}: "
                         f"{first}") from None
    result[_missing(left, df) | _missing(right, df)] = None  # unknown
    return result


def _condition(node: Node, df: pd.DataFrame, text: str) -> pd.Series:
    kind = node[0]
    if kind in ("and", "or"):
        parts = [_condition(n, df, text) for n in node[1]]
        out = parts[0]
        for part in parts[1:]:
            out = (out & part) if kind == "and" else (out | part)  # Kleene logic: unknown stays unknown
        return out
    if kind == "not":
        return ~_condition(node[1], df, text)
    if kind == "cmp":
        operands, ops = node[1], node[2]
        parts = [_compare(a, op, b, df, text) for a, op, b in zip(operands, ops, operands[1:])]
        out = parts[0]
        for part in parts[1:]:
            out = out & part
        return out
    if kind == "in":
        return _isin(node, df)
    if kind == "call":
        missing = df[node[2]].isna().to_numpy(dtype=bool)
        return _boolean(missing if node[1] == "isna" else ~missing, df.index)
    if kind == "const":
        return _boolean(node[1], df.index)
    return _truth_column(node[1], df, text)


def _isin(node: Node, df: pd.DataFrame) -> pd.Series:
    _, negate, operand, values = node
    wants_missing = None in values
    present = [v for v in values if v is not None]
    if operand[0] == "const":
        value = operand[1]
        hit = (value is None and wants_missing) or (value is not None and value in present)
        return _boolean(hit != negate, df.index)
    col = df[operand[1]]
    missing = col.isna().to_numpy(dtype=bool)
    hit = col.isin(present).to_numpy(dtype=bool) & ~missing
    result = _boolean(hit != negate, df.index)
    if wants_missing:
        result[missing] = not negate
    else:
        result[missing] = None  # unknown
    return result


def _truth_column(name: str, df: pd.DataFrame, text: str) -> pd.Series:
    import pandas as pd

    col = df[name]
    if not pd.api.types.is_bool_dtype(col.dtype):
        raise QueryError(f"bad filter {text!r}: column {name!r} is not a true/false column; compare it with a "
                         f"value, e.g. {name} == ...")
    return col.astype("boolean")


# -------------------------------------------------------------------------------------------------- selecting
def _status_mask(df: pd.DataFrame, status: TrialStatus | str | None) -> np.ndarray:
    if status is None:
        return np.ones(len(df), dtype=bool)
    return (df["status"] == str(status)).fillna(False).to_numpy(dtype=bool)


def row_mask(df: pd.DataFrame, *, status: TrialStatus | str | None = DEFAULT_STATUS,
             where: Filter | None = None) -> np.ndarray:
    """The rows of ``df`` with ``status`` (None: any) where the filter ``where`` is true."""
    mask = _status_mask(df, status).copy()  # a fresh, writable array
    if where is not None:
        mask &= where.mask(df)
    return mask


def select(df: pd.DataFrame, directions: Mapping[str, str], *, status: TrialStatus | str | None = DEFAULT_STATUS,
           where: Filter | None = None, sort: str | None = None, limit: int | None = None,
           drop_missing: bool = False) -> pd.DataFrame:
    """The rows of ``df`` that ``Leaderboard`` rankings and the CLI table show: ``row_mask``'s rows, best first.

    Args:
        df: the table, in (experiment, trial_id) order (the order of ties).
        directions: metric column -> "max" | "min" (a column without one sorts ascending).
        status: keep only rows of this status (default completed trials; None: every row).
        where: a parsed filter.
        sort: the column to sort by (None: keep the order).
        limit: keep the first ``limit`` rows.
        drop_missing: leave out rows without a value for ``sort`` (a ranking), instead of listing them last.
    """
    df = df[row_mask(df, status=status, where=where)]
    if sort is not None:
        if drop_missing:
            df = df[df[sort].notna().to_numpy(dtype=bool)]
        df = df.sort_values(sort, ascending=directions.get(sort, "min") == "min", na_position="last", kind="stable")
    return df if limit is None else df.head(limit)
