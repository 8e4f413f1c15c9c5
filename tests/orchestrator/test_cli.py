"""The `octollm` command as a user runs it, in a child process."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import REFERENCE_ARMS


async def octollm(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `python -m orchestrator_svc.cli ARGS`; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator_svc.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_dev_once_runs_the_sample_task() -> None:
    """`octollm dev --once` serves every reference arm and answers the sample task from the
    bundled documents, checked by the judge; exits 0."""
    code, out, err = await octollm(
        "dev", "--once", "--listen", "127.0.0.1:0", env={"OCTOLLM_METRICS_PORT": "0"}
    )
    assert code == 0, err
    assert "OctoLLM mesh listening on 127.0.0.1:" in out
    assert "ingested 3 file(s)" in out
    assert "plan 3 step(s): search(retriever)" in out
    assert "step review     SUCCEEDED on judge-" in out
    lines = out.rstrip().splitlines()
    done = next(i for i, line in enumerate(lines) if line.endswith("task SUCCEEDED"))
    assert "From the indexed documents" in "\n".join(lines[done:])
    assert "flow-control.md" in "\n".join(lines[done:])
    assert "exit 0: 1024" in "\n".join(lines[done:])  # the executor ran the snippet


async def test_submit_watch_and_watch_replay(start_arm, start_orchestrator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`octollm submit --watch` follows a task to the end; `octollm watch` replays it."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))
    plan = tmp_path / "plan.json"
    greeting = "Hello! The echo arm ran this step and sent its input back."
    step = {"step_id": "greet", "arm_type": "echo", "input": {"text": greeting}}
    plan.write_text(json.dumps({"steps": [step]}))
    code, out, err = await octollm(
        "submit",
        "Say hello from the command line",
        "--plan",
        str(plan),
        "--watch",
        "--address",
        orch.address,
    )
    assert code == 0, err
    task_id = out.splitlines()[0]
    assert "task SUCCEEDED" in out
    task = await orch.store.get(task_id)
    assert task.state == pb.TASK_STATE_SUCCEEDED

    code, replay, err = await octollm(
        "watch", task_id, "--after-seq", "2", "--address", orch.address
    )
    assert code == 0, err
    assert replay.splitlines()[0].startswith("[  3]")
    assert "task SUCCEEDED" in replay


async def test_bad_input_is_a_clear_message_not_a_traceback(start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """A rejected submit prints the status and reason; bad config exits 2."""
    orch = await start_orchestrator([])
    code, _, err = await octollm("submit", "too short", "--address", orch.address)
    assert code == 1
    assert "INVALID_ARGUMENT" in err
    assert "Traceback" not in err
    code, _, err = await octollm("serve", env={"OCTOLLM_MAX_RETRIES": "zero"})
    assert code == 2
    assert "OCTOLLM_MAX_RETRIES=" in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


async def test_submit_sends_the_client_token(start_arm, start_orchestrator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With OCTOLLM_CLIENT_TOKEN the CLI authenticates; without it the refusal is one line."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator(
        [echo.address], wait_for=("echo",), auth_tokens="ci:s3cret-token"
    )
    plan = tmp_path / "plan.json"
    greeting = "Hello! The echo arm ran this step for an authenticated client."
    plan.write_text(
        json.dumps(
            {"steps": [{"step_id": "greet", "arm_type": "echo", "input": {"text": greeting}}]}
        )
    )
    args = (
        "submit",
        "Say hello with a token please",
        "--plan",
        str(plan),
        "--watch",
        "--address",
        orch.address,
    )
    code, out, err = await octollm(*args, env={"OCTOLLM_CLIENT_TOKEN": "s3cret-token"})
    assert code == 0, err
    assert "task SUCCEEDED" in out
    code, _, err = await octollm(*args, env={"OCTOLLM_CLIENT_TOKEN": ""})
    assert code == 1
    assert "UNAUTHENTICATED" in err
    assert "Traceback" not in err


def test_the_commands_run_on_uvloop_unless_asked_not_to() -> None:
    """OCTOLLM_EVENT_LOOP: auto and uvloop pick uvloop (a dependency), asyncio the default."""
    import uvloop

    from orchestrator_svc.cli import loop_factory

    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None


async def test_a_port_already_served_is_a_clear_error_not_a_shared_port(
    start_arm, start_orchestrator
) -> None:  # type: ignore[no-untyped-def]
    """A second server on a port an orchestrator or arm already serves fails to start with one
    line naming the address (grpc's SO_REUSEPORT would let both listen and split the clients
    between them), for `octollm serve` and `octollm arm` alike."""
    orch = await start_orchestrator([])
    arm = await start_arm(REFERENCE_ARMS["echo"]())
    for args in (("serve", "--listen", orch.address), ("arm", "echo", "--listen", arm.address)):
        code, _, err = await octollm(*args, env={"OCTOLLM_METRICS_PORT": "-1"})
        assert code == 1, err
        assert "Traceback" not in err
        (line,) = [line for line in err.strip().splitlines() if line.startswith("octollm:")]
        assert f"cannot listen on {args[-1]}" in line
