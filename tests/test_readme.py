"""The README's promises: two Quick start commands, and CI running exactly the second one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Quick start\s*$(.*?)(?=^##\s)", text, re.M | re.S)
    assert section is not None, "README.md has no '## Quick start' section"
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section.group(1), re.S)]


def test_quick_start_has_exactly_two_commands() -> None:
    """Quick start holds two bash blocks: install + `octollm dev`, then the test suite."""
    run, test = quick_start_blocks()
    assert run.endswith('octollm" dev')
    assert test.endswith("-m pytest")


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run executes the README's test command verbatim, with CI=1 so nothing is skipped."""
    _, test = quick_start_blocks()
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in script
    assert "export CI=1" in script


def test_every_setting_is_in_the_configuration_reference() -> None:
    """Each OCTOLLM_* variable the orchestrator and the executor read has a README row."""
    from orchestrator_svc.arms.executor._settings import ExecutorSettings
    from orchestrator_svc.config import Settings

    text = (ROOT / "README.md").read_text()
    names = [f"OCTOLLM_{n.upper()}" for n in Settings.model_fields]
    names += [f"OCTOLLM_EXECUTOR_{n.upper()}" for n in ExecutorSettings.model_fields]
    missing = [n for n in names if f"| `{n}` |" not in text]
    assert missing == []
