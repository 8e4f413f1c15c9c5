"""struct_to_dict and struct_depth agree with protobuf's own JSON mapping on any JSON value."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from arm_sdk.structs import struct_depth, struct_to_dict

_scalars = (
    st.none()
    | st.booleans()
    | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    """Objects and lists deep, counted on the plain Python value."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@given(st.dictionaries(st.text(max_size=6), _json, max_size=5))
def test_struct_to_dict_is_message_to_dict(data: dict[str, Any]) -> None:
    struct = struct_pb2.Struct()
    struct.update(data)
    converted = struct_to_dict(struct)
    assert converted == json_format.MessageToDict(struct)
    assert struct_depth(struct) == _depth(converted)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_numbers_json_cannot_hold_are_refused(number: float) -> None:
    struct = struct_pb2.Struct()
    struct.fields["deep"].list_value.values.add().number_value = number
    with pytest.raises(ValueError, match="not a JSON number"):
        struct_to_dict(struct)


def test_an_unset_value_reads_as_null() -> None:
    struct = struct_pb2.Struct()
    struct.fields["empty"].SetInParent()
    assert struct_to_dict(struct) == {"empty": None} == json_format.MessageToDict(struct)
