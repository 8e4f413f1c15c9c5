"""arm_sdk: what an arm author imports to serve an OctoLLM arm over gRPC.

::

    from arm_sdk import Arm, SubtaskInput, SubtaskOutput, report_progress

    arm = Arm(arm_type="echo", description="Returns its input", capabilities=("echo",))

    @arm.handler
    async def run(inp: SubtaskInput) -> SubtaskOutput:
        await report_progress(0.5, "halfway")
        return SubtaskOutput(output={"echo": inp.input})

    arm.run("0.0.0.0:50061")   # or: server = await arm.start("127.0.0.1:0")

The server speaks ``octollm.v1.ArmService`` (Hello, credit-based flow control, dispatch,
cancel, progress, ping), ``grpc.health.v1.Health`` and server reflection. Channel and server
options both ends should use are in ``arm_sdk.grpc_options``.

Public submodules for programs that serve or read the same protocol (the orchestrator is one):
``grpc_options`` (channel and server options), ``health`` (the grpc.health.v1 servicer),
``structs`` (google.protobuf.Struct to plain Python), ``tls`` (server credentials and the
loopback-only rule for plaintext) and ``metrics_http`` (a Prometheus endpoint).

The SDK is a distribution of its own (``pip install ./gen ./arm_sdk`` from the repository):
it needs grpcio, protobuf, structlog, prometheus-client and the generated ``octollm.v1`` code,
never the orchestrator.
"""

from arm_sdk import grpc_options, health, metrics_http, structs, tls
from arm_sdk._arm import Arm
from arm_sdk._errors import ArmError
from arm_sdk._progress import report_progress
from arm_sdk._server import ArmServer
from arm_sdk._subtask import Budget, Handler, SubtaskInput, SubtaskOutput
from arm_sdk.tls import ServerTLS

__all__ = [
    "Arm",
    "ArmError",
    "ArmServer",
    "Budget",
    "Handler",
    "ServerTLS",
    "SubtaskInput",
    "SubtaskOutput",
    "grpc_options",
    "health",
    "metrics_http",
    "report_progress",
    "structs",
    "tls",
]
