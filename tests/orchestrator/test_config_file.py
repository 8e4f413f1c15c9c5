"""OCTOLLM_CONFIG_FILE: a TOML file of settings, under the environment; bad files stop start-up
with one line, in the settings and through the real `octollm` command."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator_svc.config import ConfigFileError, Settings, describe_errors
from tests.orchestrator.test_cli import octollm


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "octollm.toml"
    path.write_text(text)
    return path


def test_the_file_sets_what_the_environment_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        'listen = "127.0.0.1:50999"\narm_endpoints = ["a:1", "dns:///arms:50061"]\n'
        'max_retries = 5\nllm_api_key = "sk-from-file"\n',
    )
    monkeypatch.setenv("OCTOLLM_CONFIG_FILE", str(path))
    monkeypatch.setenv("OCTOLLM_MAX_RETRIES", "7")
    settings = Settings()
    assert settings.listen == "127.0.0.1:50999"
    assert settings.arm_endpoints == ["a:1", "dns:///arms:50061"]
    assert settings.max_retries == 7  # the environment wins
    assert settings.llm_api_key.get_secret_value() == "sk-from-file"
    assert Settings(max_retries=1).max_retries == 1  # and arguments win over both


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('lisen = "127.0.0.1:1"\n', "not settings: lisen"),
        ("listen = \n", "line 1"),
        (None, "no such file"),
    ],
)
def test_a_file_that_cannot_be_used_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str | None, message: str
) -> None:
    path = write(tmp_path, text) if text is not None else tmp_path / "missing.toml"
    monkeypatch.setenv("OCTOLLM_CONFIG_FILE", str(path))
    with pytest.raises(ConfigFileError, match=message) as caught:
        Settings()
    assert str(path) in str(caught.value)


def test_a_bad_value_in_the_file_names_its_key_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "max_retries = -1\n")
    monkeypatch.setenv("OCTOLLM_CONFIG_FILE", str(path))
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert describe_errors(caught.value).startswith(f"max_retries in {path}=-1: ")


async def test_octollm_refuses_a_bad_file_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:1"\nmax_retry = 2\n')
    code, _, err = await octollm("serve", env={"OCTOLLM_CONFIG_FILE": str(path)})
    assert code == 2
    assert err.strip() == (
        f"octollm: invalid configuration: OCTOLLM_CONFIG_FILE={str(path)!r}: not settings: "
        "max_retry"
    )
