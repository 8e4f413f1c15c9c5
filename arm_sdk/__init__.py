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
"""

from arm_sdk import grpc_options
from arm_sdk._arm import Arm
from arm_sdk._errors import ArmError
from arm_sdk._progress import report_progress
from arm_sdk._server import ArmServer
from arm_sdk._subtask import Budget, Handler, SubtaskInput, SubtaskOutput
from arm_sdk._tls import ServerTLS

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
    "report_progress",
]
