"""Names for the axes of array outputs: the ``dims`` task setting.

An output whose value on each row is an array (a histogram, a trace) gets
one axis per dimension of that array besides the rows. By default they are
called ``<output>_dim_0``, ... (:func:`psyrun.results.to_xarray`) and
``<output>_dim_1``, ... in a zarr result (whose axis 0 is ``row``). A task
file names them instead::

    dims = {'hist': ['bin'], 'image': ['y', 'x_px']}

The setting is checked in two steps, so that a mistake shows before any job
runs: :func:`check_dims_setting` when the task loads (its form, and names
that clash with parameters or with the outputs it names), and
:func:`check_output_dims` by ``psy test`` against the outputs of the first
row (outputs that do not exist, the number of names against each array's
rank, one name for axes of different lengths). The merge writes the setting
into the result's metadata (key ``dims``), where
:func:`psyrun.results.load_xarray` and the stores find it; a store never
fails because of it (it keeps the default names for axes the names do not
fit).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

__all__ = ["ROW_DIM", "check_dims_setting", "check_output_dims", "value_dims"]

#: The dimension of the rows in a zarr result; no axis of a value may be called so.
ROW_DIM = "row"

_EXAMPLE = "for example dims = {'hist': ['bin']}"


def check_dims_setting(dims: Any, params: Collection[str]) -> dict[str, list[str]]:
    """Return the ``dims`` setting as a dict of lists, or raise naming what is wrong.

    Parameters
    ----------
    dims
        The task file's setting: a dict mapping an output name to a list
        with one name per axis of the output's values.
    params
        The parameter names of the task's space.

    Raises
    ------
    TypeError
        When `dims` is not a dict of str to lists of str.
    ValueError
        When it names a parameter, repeats a name for one output, uses
        ``row`` or names an axis like a parameter or an output.
    """
    if dims is None:
        return {}
    if not isinstance(dims, Mapping):
        raise TypeError(
            "dims must be a dict of output name -> list of axis names, "
            f"{_EXAMPLE}; got {type(dims).__name__} {dims!r} (dims is a task setting: "
            "rename a variable of that name)"
        )
    params = set(params)
    out: dict[str, list[str]] = {}
    for output, names in dims.items():
        if not isinstance(output, str):
            raise TypeError(f"dims must be keyed by output names (str), got {output!r}")
        if output in params:
            raise ValueError(
                f"dims names the parameter {output!r}; parameters are scalars, dims names "
                "the axes of outputs whose values are arrays"
            )
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise TypeError(
                f"dims[{output!r}] must be a list of axis names such as ['bin'], "
                f"one per axis of the output's arrays; got {names!r}"
            )
        bad = [n for n in names if not isinstance(n, str) or not n]
        if bad:
            raise TypeError(f"dims[{output!r}] holds {bad[0]!r}; axis names are non-empty str")
        if len(set(names)) != len(names):
            raise ValueError(f"dims[{output!r}] names an axis twice: {list(names)}")
        out[output] = list(names)
    for output, names in out.items():
        for name in names:
            clash = _clash(name, params, out)
            if clash:
                raise ValueError(
                    f"dims[{output!r}] names an axis {name!r}, {clash}; choose another name"
                )
    return out


def _clash(name: str, params: Collection[str], outputs: Collection[str]) -> str | None:
    if name == ROW_DIM:
        return f"which is the rows' dimension ({ROW_DIM!r}) in zarr results"
    if name in params:
        return "like a parameter (a parameter is a dimension of its own in load_xarray)"
    if name in outputs:
        return "like an output"
    return None


def check_output_dims(
    dims: Mapping[str, list[str]], columns: Mapping[str, np.ndarray], params: Collection[str]
) -> None:
    """Check `dims` against the columns of evaluated rows (what ``psy test`` gets).

    Parameters
    ----------
    dims
        The checked setting (:func:`check_dims_setting`).
    columns
        The evaluated rows as columns (parameters and outputs).
    params
        The parameter names.

    Raises
    ------
    ValueError
        For an output that is not among `columns`, names that do not match
        the rank of the output's values, or one name for axes of different
        lengths.
    """
    outputs = [k for k in columns if k not in set(params)]
    lengths: dict[str, tuple[int, str]] = {}
    for output, names in dims.items():
        if output not in columns:
            raise ValueError(
                f"dims names {output!r}, which is not an output of execute (its outputs: "
                f"{', '.join(map(repr, outputs)) or 'none'}); fix the name or remove it"
            )
        shape = np.shape(columns[output])[1:]
        if len(shape) != len(names):
            what = "scalars" if not shape else f"{len(shape)}-d arrays (shape {shape})"
            raise ValueError(
                f"dims[{output!r}] gives {len(names)} axis name(s) {names}, but the values "
                f"of {output!r} are {what}; give one name per axis"
            )
        for name, size in zip(names, shape):
            if name in columns:
                raise ValueError(
                    f"dims[{output!r}] names an axis {name!r}, like a column of the "
                    "result; choose another name"
                )
            seen = lengths.setdefault(name, (size, output))
            if seen[0] != size:
                raise ValueError(
                    f"dims names the axis {name!r} for {seen[1]!r} (length {seen[0]}) and "
                    f"{output!r} (length {size}); an axis has one length, so give them "
                    "different names"
                )


def value_dims(column: str, ndim: int, dims: Mapping[str, Any] | None, first: int = 0) -> list:
    """Return the names of the value axes of `column` (an array of `ndim` axes, rows first).

    The names `dims` gives, else ``<column>_dim_<first>``, ``<column>_dim_<first + 1>``, ...

    Raises
    ------
    ValueError
        When `dims` names the column with a number of names other than
        ``ndim - 1``.
    """
    names = (dims or {}).get(column)
    if names is None:
        return [f"{column}_dim_{i}" for i in range(first, first + ndim - 1)]
    names = list(names)
    if len(names) != ndim - 1:
        raise ValueError(
            f"dims[{column!r}] gives {len(names)} axis name(s) {names}, but the values of "
            f"{column!r} have {ndim - 1} axis(es); fix dims in the task file"
        )
    return names
