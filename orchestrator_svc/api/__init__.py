"""gRPC edge of the orchestrator: request validation and AIP-193 error mapping."""
