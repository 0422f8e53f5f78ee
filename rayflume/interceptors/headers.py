"""Vectorised header operations on an :class:`~rayflume.event.EventBatch`.

Headers are a ``map<string, string>`` column: per-event offsets into one flat array of keys and
one flat array of values. Every operation here works on those flat arrays with Arrow kernels and
numpy index arithmetic, never with a per-event Python loop, and returns a new batch (bodies are
shared, not copied).

Guarantees of every function here:

- the result has the same events, in the same order, with the same bodies;
- an event whose header map was null comes out with an empty (non-null) map;
- an operation never gives an event the same key twice (``set_header`` replaces every earlier
  occurrence of the key unless ``preserve_existing`` keeps the event untouched);
- the order of the other headers of an event is kept; a newly set header goes last.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayflume.event import EventBatch, FlatHeaders

__all__ = ["set_header", "remove_headers", "keys_named", "keys_in", "keys_matching"]

KeyPredicate = Callable[[pa.StringArray], "pa.BooleanArray | np.ndarray"]


def _to_mask(result, size: int, what: str) -> np.ndarray:
    """A numpy boolean mask from an Arrow or numpy predicate result; nulls count as False."""
    if isinstance(result, (pa.ChunkedArray,)):
        result = result.combine_chunks()
    if isinstance(result, pa.Array):
        if result.type != pa.bool_():
            raise TypeError(f"{what} must return a boolean array, got {result.type}")
        mask = np.asarray(pc.fill_null(result, False), dtype=bool) if len(result) else np.zeros(0, bool)
    else:
        mask = np.asarray(result, dtype=bool)
    if mask.shape != (size,):
        raise ValueError(f"{what} returned {mask.shape[0] if mask.ndim else 'a scalar'} values "
                         f"for {size} header keys")
    return mask


def _event_counts(entry_mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per event, how many of its entries are set in ``entry_mask``."""
    cumulative = np.concatenate(([0], np.cumsum(entry_mask, dtype=np.int64)))
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def _build_map(offsets: np.ndarray, keys: pa.Array, items: pa.Array) -> pa.MapArray:
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError("a batch holds more than 2**31 header entries; split it into smaller batches")
    return pa.MapArray.from_arrays(pa.array(offsets.astype(np.int32)), keys, items)


def _keep_entries(batch: EventBatch, flat: FlatHeaders, keep: np.ndarray) -> EventBatch:
    kept_lengths = _event_counts(keep, flat.offsets)
    offsets = np.concatenate(([0], np.cumsum(kept_lengths, dtype=np.int64)))
    mask = pa.array(keep, pa.bool_())
    return batch.with_headers(_build_map(offsets, flat.keys.filter(mask), flat.items.filter(mask)))


def _values_array(values, n: int) -> tuple[pa.Array | None, np.ndarray | None]:
    """``(array, valid_mask)`` for an array of values, ``(None, None)`` for a scalar str."""
    if isinstance(values, str):
        return None, None
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        raise TypeError(f"header values must be a str or a pyarrow string array, not {type(values).__name__}")
    if values.type != pa.string():
        if values.type in (pa.large_string(), pa.string_view()):
            values = values.cast(pa.string())
        else:
            raise TypeError(f"header values must be strings, got an array of {values.type}")
    if len(values) != n:
        raise ValueError(f"got {len(values)} header values for a batch of {n} events")
    valid = np.asarray(values.is_valid(), dtype=bool) if values.null_count else np.ones(n, dtype=bool)
    return values, valid


def set_header(batch: EventBatch, key: str, values, preserve_existing: bool = False) -> EventBatch:
    """Set header ``key`` on every event of ``batch``.

    ``values`` is one ``str`` for every event, or a pyarrow string array of ``len(batch)`` values;
    a null in that array leaves its event unchanged. With ``preserve_existing`` an event that
    already has ``key`` keeps its value; otherwise every earlier occurrence of ``key`` in the
    event is removed and the new value goes last, so the key appears exactly once.
    """
    if not isinstance(key, str):
        raise TypeError(f"a header key must be a str, not {type(key).__name__}")
    n = len(batch)
    value_array, target = _values_array(values, n)
    if n == 0:
        return batch
    if target is None:
        target = np.ones(n, dtype=bool)

    flat = FlatHeaders(batch.headers)
    has_entries = len(flat.keys) > 0
    if has_entries:
        matches = np.asarray(pc.fill_null(pc.equal(flat.keys, key), False), dtype=bool)
        if flat.live is not None:
            matches &= flat.live
        has_key = _event_counts(matches, flat.offsets) > 0
    else:
        matches = np.zeros(0, dtype=bool)
        has_key = np.zeros(n, dtype=bool)

    if preserve_existing:
        target = target & ~has_key

    # Entries kept: live ones, minus the old occurrences of the key in events that get a new value.
    entry_events = flat.entry_events()
    keep = np.ones(len(flat.keys), dtype=bool) if flat.live is None else flat.live.copy()
    if has_entries:
        keep &= ~(matches & target[entry_events])

    new_lengths = _event_counts(keep, flat.offsets) + target
    new_offsets = np.concatenate(([0], np.cumsum(new_lengths, dtype=np.int64)))
    if not target.any():
        if keep.all():
            return batch
        return _keep_entries(batch, flat, keep)

    # The output is concat([kept entries, new entries]) permuted by `order`. A kept entry moves
    # right by the number of new entries of the events before its own; an event's new entry
    # takes the last position of its slot.
    all_kept = bool(keep.all())
    n_kept = len(flat.keys) if all_kept else int(np.count_nonzero(keep))
    targets = np.flatnonzero(target)
    order = np.empty(int(new_offsets[-1]), dtype=np.int64)
    if n_kept:
        kept_events = entry_events if all_kept else entry_events[keep]
        added_before = np.cumsum(target, dtype=np.int64) - target
        order[np.arange(n_kept, dtype=np.int64) + added_before[kept_events]] = np.arange(n_kept, dtype=np.int64)
    order[new_offsets[targets + 1] - 1] = n_kept + np.arange(len(targets), dtype=np.int64)

    kept_keys, kept_items = flat.keys, flat.items
    if not all_kept:
        kept_mask = pa.array(keep, pa.bool_())
        kept_keys, kept_items = kept_keys.filter(kept_mask), kept_items.filter(kept_mask)
    new_keys = pa.repeat(pa.scalar(key, pa.string()), len(targets))
    if value_array is None:
        new_items = pa.repeat(pa.scalar(values, pa.string()), len(targets))
    else:
        new_items = value_array.filter(pa.array(target, pa.bool_()))
    if n_kept == 0:
        out_keys, out_items = new_keys, new_items
    else:
        order_array = pa.array(order)
        out_keys = pa.concat_arrays([kept_keys, new_keys]).take(order_array)
        out_items = pa.concat_arrays([kept_items, new_items]).take(order_array)
    return batch.with_headers(_build_map(new_offsets, out_keys, out_items))


def remove_headers(batch: EventBatch, predicate: KeyPredicate) -> EventBatch:
    """Remove every header whose key ``predicate`` selects.

    ``predicate`` gets the flat array of all header keys of the batch and returns a boolean mask
    of the same length (a pyarrow BooleanArray or numpy array; null counts as "keep"). Build one
    with :func:`keys_named`, :func:`keys_in` or :func:`keys_matching`. Returns ``batch`` itself
    when nothing is removed.
    """
    if len(batch) == 0:
        return batch
    flat = FlatHeaders(batch.headers)
    if len(flat.keys) == 0:
        if flat.live is None:
            return batch
        return _keep_entries(batch, flat, np.zeros(0, dtype=bool))
    remove = _to_mask(predicate(flat.keys), len(flat.keys), "a header predicate")
    keep = ~remove
    if flat.live is not None:
        keep &= flat.live
    elif keep.all():
        return batch
    return _keep_entries(batch, flat, keep)


# -- predicates for remove_headers ----------------------------------------------------------------

def keys_named(name: str) -> KeyPredicate:
    """Selects keys equal to ``name``."""
    scalar = pa.scalar(name, pa.string())
    return lambda keys: pc.equal(keys, scalar)


def keys_in(names) -> KeyPredicate:
    """Selects keys equal to any of ``names``."""
    value_set = pa.array(sorted(set(names)), pa.string())
    return lambda keys: pc.is_in(keys, value_set=value_set)


def keys_matching(pattern: str) -> KeyPredicate:
    """Selects keys that match the RE2 regex ``pattern`` as a whole (Java ``Matcher.matches``)."""
    anchored = f"^(?:{pattern})$"
    return lambda keys: pc.match_substring_regex(keys, anchored)
