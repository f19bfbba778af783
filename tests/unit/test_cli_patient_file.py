"""`acquire --patient-file`: the patient's ID and name come from a file or standard input, so
they never appear in the process list (issue 13, finding 13)."""

from __future__ import annotations

import io
import json
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


PATIENT = {"patient_id": "PHI-CANARY-7", "patient_name": "Zzcanary^Phi"}


def test_patient_from_standard_input(config_file: Path, sent: list[dict[str, Any]],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(PATIENT)))
    argv = ["--config", str(config_file), "acquire", "--unscheduled", "--patient-file", "-"]
    assert cli.main(argv) == 0
    assert sent == [{"frames": 1, "confirm_exposure": True, "unscheduled": True, **PATIENT}]
    assert not any("CANARY" in a for a in argv)      # nothing in the process list


def test_patient_from_a_file(config_file: Path, sent: list[dict[str, Any]],
                             tmp_path: Path) -> None:
    source = tmp_path / "patient.json"
    source.write_text(json.dumps(PATIENT))
    assert cli.main(["--config", str(config_file), "acquire", "--unscheduled",
                     "--patient-file", str(source), "--frames", "2"]) == 0
    assert sent[0]["patient_id"] == "PHI-CANARY-7" and sent[0]["frames"] == 2


@pytest.mark.parametrize("content", ["not json", "[]", '{"patient_id": "P1"}',
                                     '{"patient_id": 7, "patient_name": "A^B"}'])
def test_a_bad_patient_file_is_a_clear_error(config_file: Path, sent: list[dict[str, Any]],
                                             tmp_path: Path, content: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "patient.json"
    source.write_text(content)
    assert cli.main(["--config", str(config_file), "acquire", "--unscheduled",
                     "--patient-file", str(source)]) == 1
    assert "--patient-file" in capsys.readouterr().err and sent == []


def test_patient_file_and_arguments_are_exclusive(config_file: Path,
                                                  sent: list[dict[str, Any]],
                                                  tmp_path: Path) -> None:
    assert cli.main(["--config", str(config_file), "acquire", "--unscheduled",
                     "--patient-file", "-", "--patient-id", "P"]) == 1
    assert cli.main(["--config", str(config_file), "acquire", "--accession", "A1",
                     "--patient-file", "-"]) == 1
    assert sent == []
