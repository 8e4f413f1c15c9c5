"""OctoLLM orchestrator: the brain behind the gRPC OrchestratorService."""
