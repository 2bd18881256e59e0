"""The JSON nesting limit is ngxsim's own, the same on every Python (3.13's parser accepts
thousands of levels where 3.11's stops near 1000)."""

from __future__ import annotations

from ngxsim.core.http.jsonapi import MAX_JSON_DEPTH, nesting_depth


def test_depth_counts_arrays_and_objects_not_brackets_in_strings():
    assert nesting_depth(b'{"a": [1, {"b": []}]}') == 4
    assert nesting_depth(b'["[[[[", "\\\\", "\\"[{"]') == 1
    assert nesting_depth(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) == MAX_JSON_DEPTH
    assert nesting_depth(b"[" * 2000 + b"]" * 2000) == 2000
