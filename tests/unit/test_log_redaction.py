"""pydicom quotes an invalid value in its warning ("Invalid value for VR DA: '1955.03.02'."),
logged at WARNING and also raised as a Python warning that Python prints to stderr. Such a
value can be patient data (a birth date or age a RIS wrote the old way, copied from a
worklist response into our object): the agent's log must not carry it.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset

from agent.logsetup import setup_logging

#: a birth date written the old ACR-NEMA way: not a valid DA, so pydicom warns, quoting it
SECRET_BIRTH_DATE = "1955.03.02"


@pytest.fixture
def agent_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    with warnings.catch_warnings():
        # as in production: Python's default filter, not the test suite's "error"
        warnings.simplefilter("default")
        setup_logging("INFO")
        try:
            yield stream
        finally:
            logging.captureWarnings(False)
            for handler in list(root.handlers):
                root.removeHandler(handler)
            for handler in saved_handlers:
                root.addHandler(handler)
            root.setLevel(saved_level)


def copy_invalid_birth_date() -> str:
    """What the IOD builder does with a worklist's birth date: pydicom checks a value when it is
    set (writing validation, WARN by default) and quotes it in its warning."""
    ds = Dataset()
    ds.PatientBirthDate = SECRET_BIRTH_DATE
    return str(ds.PatientBirthDate)


def test_pydicoms_invalid_value_warning_reaches_the_log_without_the_value(
        agent_log: io.StringIO) -> None:
    assert copy_invalid_birth_date() == SECRET_BIRTH_DATE      # the value itself is still read
    logged = agent_log.getvalue()
    assert "Invalid value for VR DA" in logged                  # the problem is still told
    assert "value withheld" in logged
    assert "1955" not in logged


def test_other_log_lines_pass_unchanged(agent_log: io.StringIO) -> None:
    logging.getLogger("agent.test").warning("queue item %d: archive answered %s", 7, "0xA700")
    assert "queue item 7: archive answered 0xA700" in agent_log.getvalue()


@pytest.mark.parametrize("message", [
    "Invalid value for VR DA: '1955.03.02'. Please see <https://dicom.nema.org/x> for allowed "
    "values for each VR.",
    "Invalid value for VR AS: \"45 'Y' 1955\".",
    "Invalid value for VR PN: 'O\\'Brien 1955. Mary'.",
    "Invalid value for VR TM: b'1955'.",
    "Invalid value for VR DA: ['1955', '19550302'].",
    'Value "1955 kg" is not valid for elements with a VR of IS',
])
def test_every_form_of_quoted_value_is_withheld(message: str) -> None:
    from agent.logsetup import WithholdDicomValues

    record = logging.LogRecord("pydicom", logging.WARNING, __file__, 1, "%s", (message,), None)
    assert WithholdDicomValues().filter(record)
    text = record.getMessage()
    assert "1955" not in text
    assert "(value withheld)" in text
