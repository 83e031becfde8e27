"""Bool, int and float columns as pickle opcodes, written and read by NumPy.

A column of a :class:`~psyrun.store.PickleStore` file is a pickled list, and
``pickle`` turns every row into a Python object on the way in and out. For
1-d bool, int and float columns that costs far more than the data: here every
row is one fixed-size record (an opcode and its value), so a whole run of
rows is one structured NumPy array. :func:`encode_items` writes such runs;
:func:`decode_items` reads them back, and also the runs the standard Pickler
writes for floats, bools and ints of one width (files of earlier versions).
``pickle.load`` of the file gives the same Python values either way.

The records, by opcode:

* ``BINFLOAT`` + 8 bytes big-endian: floats (float16 and float32 widen exactly);
* ``BININT1``, ``BININT2`` (unsigned), ``BININT`` (signed 4 bytes), ``LONG1``
  with 8 bytes (signed) or 9 (an unsigned 8 and a zero sign byte): ints,
  the most compact that holds every row of the column;
* ``NEWTRUE`` / ``NEWFALSE``: bools.
"""

from __future__ import annotations

import pickle

import numpy as np

__all__ = ["decode_items", "encode_items"]

_MARK = pickle.MARK[0]
_APPEND = pickle.APPEND[0]
_APPENDS = pickle.APPENDS[0]
_TRUE, _FALSE = pickle.NEWTRUE[0], pickle.NEWFALSE[0]

# Integer opcodes, most compact first: the opcode (with any fixed argument
# bytes) and the dtype its value is written in. LONG1 takes a length byte.
_INT_OPCODES = (
    (pickle.BININT1, np.dtype("<u1")),
    (pickle.BININT2, np.dtype("<u2")),
    (pickle.BININT, np.dtype("<i4")),
    (pickle.LONG1 + b"\x08", np.dtype("<i8")),
)
# uint64 values >= 2**63: 8 bytes would read as negative; a zero 9th byte
# keeps the sign positive.
_LONG_UNSIGNED = (pickle.LONG1 + b"\x09", np.dtype("<u8"), 1)
# The opcode of a bool row, indexed by the row as 0 or 1.
_BOOL_OPCODES = np.frombuffer(pickle.NEWFALSE + pickle.NEWTRUE, dtype=np.uint8)


def _codable(dtype: np.dtype) -> bool:
    return dtype.kind in "biu" or (dtype.kind == "f" and dtype.itemsize <= 8)


def _record(opcode: bytes, value: np.dtype, padding: int) -> np.dtype:
    """Return the structured dtype of one row: opcode bytes, value, zero padding."""
    return np.dtype(
        {
            "names": ["opcode", "value"],
            "formats": [f"S{len(opcode)}", value],
            "itemsize": len(opcode) + value.itemsize + padding,
        }
    )


def _number_opcode(column: np.ndarray) -> tuple[bytes, np.dtype, int]:
    """Choose the opcode that pushes every row of a numeric ``column``.

    Parameters
    ----------
    column
        A 1-d array of dtype kind ``'f'`` (at most 8 bytes), ``'i'`` or ``'u'``.

    Returns
    -------
    opcode : bytes
        The opcode, followed by any argument bytes that are the same for every row.
    value : numpy.dtype
        The dtype each row's value is written in, right after ``opcode``.
    padding : int
        Zero bytes after the value.
    """
    if column.dtype.kind == "f":
        # float16/32 widen exactly to the float64 that tolist() gives.
        return pickle.BINFLOAT, np.dtype(">f8"), 0
    # One opcode for the whole column, chosen by its range (as Python ints,
    # so uint64 and int64 limits compare exactly).
    low, high = int(column.min()), int(column.max())
    for opcode, value in _INT_OPCODES:
        info = np.iinfo(value)
        if info.min <= low and high <= info.max:
            return opcode, value, 0
    return _LONG_UNSIGNED


def encode_items(column: np.ndarray) -> bytes | None:
    """Opcodes for the rows of a 1-d bool, int or float column, built by NumPy.

    They load as ``column.tolist()`` does (a Python ``bool``, ``int`` or
    ``float`` per row) but cost a fraction of pickling that list: each row is
    one fixed-size record (opcode, value) of a structured array, and all rows
    go between one MARK and APPENDS.

    Parameters
    ----------
    column
        Any column.

    Returns
    -------
    bytes or None
        The opcodes, or None when ``column`` is of another kind, not 1-d, a
        subclass of ``ndarray`` (a masked array's ``tolist()`` differs) or
        ``longdouble`` (whose ``tolist()`` keeps NumPy scalars).
    """
    dtype = column.dtype
    if type(column) is not np.ndarray or column.ndim != 1 or not _codable(dtype):
        return None
    if len(column) == 0:
        return b""  # as the Pickler gives for an empty list
    if dtype.kind == "b":
        # astype gives exactly 0 or 1 (a bool array viewed from other bytes may not).
        items = _BOOL_OPCODES.take(column.astype(np.uint8))
        return b"".join((pickle.MARK, items, pickle.APPENDS))
    opcode, value, padding = _number_opcode(column)
    items = np.zeros(len(column), dtype=_record(opcode, value, padding))  # zeros: padding
    items["opcode"] = opcode
    # Converting first is faster than converting into the unaligned field.
    items["value"] = column.astype(value)
    # One copy into the bytes (MARK + items.tobytes() + APPENDS makes three).
    return b"".join((pickle.MARK, items, pickle.APPENDS))


# -- reading -----------------------------------------------------------------------

# Record layouts that decode_items reads, keyed by their opcode byte; LONG1's
# are keyed by opcode and length byte.
_READ_FLOAT = {pickle.BINFLOAT[0]: (pickle.BINFLOAT, np.dtype(">f8"), 0)}
_READ_INT = {opcode[0]: (opcode, value, 0) for opcode, value in _INT_OPCODES[:3]}
_READ_LONG = {
    _INT_OPCODES[3][0]: (*_INT_OPCODES[3], 0),
    _LONG_UNSIGNED[0]: _LONG_UNSIGNED,
}


def _layout_at(buf: np.ndarray, pos: int, kind: str) -> tuple[bytes, np.dtype, int] | None:
    """Return the record layout of the row at `pos` in a column of dtype kind `kind`."""
    op = int(buf[pos])
    if kind == "f":
        return _READ_FLOAT.get(op)
    if op == pickle.LONG1[0] and pos + 1 < len(buf):
        return _READ_LONG.get(bytes(buf[pos : pos + 2]))
    return _READ_INT.get(op)


def _run_length(buf: np.ndarray, start: int, end: int, size: int, first: bytes) -> int:
    """Count the records of `size` bytes from `start` (before `end`) that begin with `first`.

    Records are checked in growing chunks, so a run costs what it holds.
    """
    n, limit, chunk = 0, (end - start) // size, 1024
    while n < limit:
        k = min(chunk, limit - n)
        lo = start + n * size
        same = np.ones(k, dtype=bool)
        for i, byte in enumerate(first):
            same &= buf[lo + i : lo + k * size : size] == byte
        if not same.all():
            return n + int(np.argmin(same))
        n += k
        chunk *= 4
    return n


def _bool_run_length(buf: np.ndarray, start: int, end: int) -> int:
    """Count the NEWTRUE/NEWFALSE bytes from `start` (before `end`)."""
    n, chunk = 0, 4096
    while start + n < end:
        part = buf[start + n : min(end, start + n + chunk)]
        same = (part == _TRUE) | (part == _FALSE)
        if not same.all():
            return n + int(np.argmin(same))
        n += len(part)
        chunk *= 4
    return n


def decode_items(
    buf: np.ndarray, pos: int, end: int, out: np.ndarray, filled: int
) -> tuple[int, int] | None:
    """Read the rows pushed onto a list at `pos` into ``out[filled:]``.

    Reads batches of ``MARK record... APPENDS`` and single ``record APPEND``
    until the next opcode is neither (the caller checks what it is).

    Parameters
    ----------
    buf : numpy.ndarray of uint8
        The file's bytes.
    pos : int
        Where the rows' opcodes start.
    end : int
        No record reaches past this offset (the file's STOP).
    out : numpy.ndarray
        The column, 1-d, of the column's dtype, as long as all its rows.
    filled : int
        Rows of `out` read before these.

    Returns
    -------
    (int, int) or None
        The rows of `out` read in all and the offset after these rows; None
        when they are not records this module reads (objects, strings, ints
        of mixed widths from the standard Pickler) or more than `out` holds:
        read the file with ``pickle``.
    """
    dtype = out.dtype
    if not _codable(dtype):
        return None
    while pos < end:
        batch = int(buf[pos]) == _MARK
        start = pos + 1 if batch else pos
        if start >= end:
            return None
        if dtype.kind == "b":
            if not batch and int(buf[start]) not in (_TRUE, _FALSE):
                return filled, pos  # not a row: the rows ended
            n = _bool_run_length(buf, start, end) if batch else 1
            if filled + n > len(out):
                return None
            out[filled : filled + n] = buf[start : start + n] == _TRUE
            pos = start + n
        else:
            layout = _layout_at(buf, start, dtype.kind)
            if layout is None:
                # A MARK before rows of another kind: not ours to read.
                return None if batch else (filled, pos)
            opcode, value, padding = layout
            record = _record(opcode, value, padding)
            size = record.itemsize
            n = _run_length(buf, start, end, size, opcode) if batch else 1
            if start + n * size > end or filled + n > len(out):
                return None
            rows = np.frombuffer(buf, dtype=record, count=n, offset=start)
            out[filled : filled + n] = rows["value"]
            pos = start + n * size
        filled += n
        closing = _APPENDS if batch else _APPEND
        if pos >= end or int(buf[pos]) != closing:
            return None  # rows of mixed widths, or not a list of rows at all
        pos += 1
    return filled, pos
