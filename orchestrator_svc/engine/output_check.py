"""Checking an arm's output: nesting every client can read, and the arm's declared JSON Schema."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import common_pb2

from arm_sdk.structs import struct_depth, struct_to_dict

from ..mesh import mesh_failure

# NOTE: protobuf's Python reader stops at about 65 message levels and each JSON level is two
# (Struct, Value); the events, tasks and dispatches that carry an output (a dependant's input:
# Dispatch, input, dependencies, step) add up to 6 more. 24 leaves room for all of them.
MAX_OUTPUT_DEPTH = 24


class OutputChecker:
    """Validates outputs per arm id; compiled validators are cached per (arm, schema)."""

    def __init__(self) -> None:
        self._validators: dict[tuple[str, bytes], Draft202012Validator | None] = {}

    def check(
        self, descriptor: arm_pb.ArmDescriptor | None, output: struct_pb2.Struct
    ) -> common_pb2.Failure | None:
        """A Failure when `output` nests past MAX_OUTPUT_DEPTH (OUTPUT_TOO_DEEP: no client
        could read the task) or breaks the arm's output schema (retryable INVALID_OUTPUT)."""
        depth = struct_depth(output)
        if depth > MAX_OUTPUT_DEPTH:
            arm_id = descriptor.arm_id if descriptor is not None else ""
            return mesh_failure(
                grpc.StatusCode.INVALID_ARGUMENT,
                "OUTPUT_TOO_DEEP",
                f"arm {arm_id or '?'} returned output nested {depth} objects and lists deep, "
                f"more than the {MAX_OUTPUT_DEPTH} every reader of the task can parse",
                retryable=False,
                metadata={"arm_id": arm_id, "depth": str(depth)},
            )
        if descriptor is None or not descriptor.output_schema.fields:
            return None
        validator = self._validator(descriptor)
        if validator is None:
            return None
        data: Any = struct_to_dict(output)
        error = next(iter(validator.iter_errors(data)), None)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return mesh_failure(
            grpc.StatusCode.DATA_LOSS,
            "INVALID_OUTPUT",
            f"arm {descriptor.arm_id} returned output that breaks its declared schema at "
            f"{where}: {error.message}",
            retryable=True,
            metadata={"arm_id": descriptor.arm_id, "path": where},
        )

    def _validator(self, descriptor: arm_pb.ArmDescriptor) -> Draft202012Validator | None:
        key = (descriptor.arm_id, descriptor.output_schema.SerializeToString(deterministic=True))
        if key not in self._validators:
            schema = json_format.MessageToDict(descriptor.output_schema)
            try:
                Draft202012Validator.check_schema(schema)
                self._validators[key] = Draft202012Validator(schema)
            except SchemaError:
                # NOTE: an arm with a broken schema is not the output's fault: do not check.
                self._validators[key] = None
        return self._validators[key]
