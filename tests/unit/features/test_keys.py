"""Entity inputs as keys: INT64 or BYTES, [-1] or [-1, 1]; merged without duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from headrace.errors import InvalidArgumentError
from headrace.features.keys import merge_keys, normalize_entity


def test_int64_column_and_row_shapes() -> None:
    flat = normalize_entity("u", np.array([3, 1], np.int64))
    column = normalize_entity("u", np.array([[3], [1]], np.int64))
    assert flat.dtype == np.int64 and flat.tolist() == [3, 1]
    assert column.tolist() == [3, 1] and column.ndim == 1


def test_bytes_in_every_numpy_form() -> None:
    objects = np.array([b"a", b"bc"], dtype=object)
    assert normalize_entity("u", objects).tolist() == [b"a", b"bc"]
    assert normalize_entity("u", np.array([b"a", b"bc"])).tolist() == [b"a", b"bc"]
    assert normalize_entity("u", np.array(["a", "é"])).tolist() == [b"a", "é".encode()]
    mixed = np.array([b"a", "b"], dtype=object).reshape(2, 1)
    assert normalize_entity("u", mixed).tolist() == [b"a", b"b"]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 2), np.int64), r"shape \[2, 2\], expected \[-1\] or \[-1, 1\]"),
        (np.zeros((2, 1, 1), np.int64), "shape"),
        (np.zeros(2, np.float32), "datatype float32, expected INT64 or BYTES"),
        (np.zeros(2, np.int32), "datatype int32"),
        (np.array([b"a", 3], dtype=object), "element 1 is int"),
    ],
)
def test_bad_entities_are_invalid_arguments(array: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as error:
        normalize_entity("user_id", array)
    assert "'user_id'" in error.value.message


def test_merge_keeps_first_seen_order_and_positions() -> None:
    a = np.array([5, 7, 5], np.int64)
    b = np.array([7, 9], np.int64)
    merged = merge_keys([a, b])
    assert merged.unique.tolist() == [5, 7, 9]
    for part, at in zip([a, b], merged.positions, strict=True):
        assert merged.unique[at].tolist() == part.tolist()


def test_merge_bytes() -> None:
    a = np.array([b"x", b"y"], dtype=object)
    b = np.array([b"y", b"z", b"x"], dtype=object)
    merged = merge_keys([a, b])
    assert merged.unique.tolist() == [b"x", b"y", b"z"]
    assert merged.unique[merged.positions[1]].tolist() == [b"y", b"z", b"x"]
