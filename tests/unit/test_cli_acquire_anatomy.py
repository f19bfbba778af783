"""`acquire --body-part TERM --laterality R|L|B|U --performed-as-scheduled`: the CLI passes the
technologist's region, side and protocol confirmation to the daemon, which checks them before
the exposure (issue 16 item 3); the daemon's refusal is the CLI's error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent import cli


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nae_title = "MOD"\nspool_dir = "{tmp_path / "spool"}"\n'
                    '[device]\ndriver = "simulated"\n'
                    '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 104\n'
                    'called_ae = "PACS"\n')
    return path


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What the CLI would POST to the daemon."""
    bodies: list[dict[str, Any]] = []

    def api_call(config: Any, method: str, path: str, body: Any = None,
                 timeout_s: float = 0) -> dict[str, Any]:
        bodies.append(body)
        return {"objects": [], "warning": "", "error": None}
    monkeypatch.setattr(cli, "api_call", api_call)
    return bodies

WHO = ["--unscheduled", "--patient-id", "P1", "--patient-name", "A^B"]


def test_body_part_side_and_protocol_reach_the_request(
        config_file: Path, sent: list[dict[str, Any]]) -> None:
    assert cli.main(["--config", str(config_file), "acquire", *WHO, "--body-part", "HAND",
                     "--laterality", "L", "--performed-as-scheduled"]) == 0
    assert sent[0]["body_part"] == "HAND"
    assert sent[0]["laterality"] == "L"
    assert sent[0]["performed_as_scheduled"] is True


def test_without_them_nothing_is_claimed(config_file: Path,
                                         sent: list[dict[str, Any]]) -> None:
    assert cli.main(["--config", str(config_file), "acquire", *WHO]) == 0
    assert not {"body_part", "laterality", "performed_as_scheduled"} & set(sent[0])


def test_a_side_outside_r_l_b_u_is_a_usage_error(config_file: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--config", str(config_file), "acquire", *WHO, "--laterality", "left"])
    assert exit_info.value.code == 2
