"""The dose SR against independent tools (issue 16 item 1): dicom3tools `dciodvfy` reports no
error for the X-Ray Radiation Dose SR IOD, and DCMTK `dsrdump` parses the document and shows
its tree, for one and three exposures, with and without a dose-area product.

dciodvfy's IHE REM profile (`-profile IHEREM`) is run too: it adds Type 1 requirements for
patient and request data the agent is never given (weight, size, age, admitting diagnoses,
reason for the request). Those may only fail as that known list; any other error fails."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from support.peers import run_dciodvfy
from test_dose_sr import SERIES, UNSCHEDULED_SERIES, build, events
from test_iod_golden import UNSCHEDULED

from agent.iod import encode_part10

DSRDUMP = shutil.which("dsrdump") or "/usr/bin/dsrdump"

#: what the IHEREM profile asks for that no worklist item or device gives us; never invented
REM_UNKNOWN = frozenset({
    "PerformedProcedureCodeSequence", "ReferencedPerformedProcedureStepSequence",
    "ReasonForTheRequestedProcedure", "ReasonForRequestedProcedureCodeSequence",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientWeight",
    "PatientSize", "PatientAge"})

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not Path(DSRDUMP).exists() or not shutil.which("dciodvfy"),
                                 reason="needs DCMTK dsrdump and dicom3tools dciodvfy")]

CASES = {
    "1-event-dap": (1, True, True),
    "3-events-dap": (3, True, True),
    "1-event-no-dap": (1, False, True),
    "3-events-no-dap-unscheduled": (3, False, False),
}


def write_case(tmp_path: Path, name: str) -> Path:
    count, dap, scheduled = CASES[name]
    ds = build(events(count, dap=dap)) if scheduled else \
        build(events(count, dap=dap), order=UNSCHEDULED, series=UNSCHEDULED_SERIES)
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(encode_part10(ds))
    return path


@pytest.mark.parametrize("name", CASES)
def test_dciodvfy_finds_no_error(tmp_path: Path, name: str) -> None:
    path = write_case(tmp_path, name)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert "XRayRadiationDoseSR" in result.stdout + result.stderr, "not seen as a dose SR"
    assert run_dciodvfy(path) == []


@pytest.mark.parametrize("name", CASES)
def test_ihe_rem_profile_misses_only_what_nobody_told_us(tmp_path: Path, name: str) -> None:
    path = write_case(tmp_path, name)
    result = subprocess.run(["dciodvfy", "-profile", "IHEREM", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    errors = [line for line in (result.stdout + result.stderr).splitlines()
              if line.startswith("Error")]
    unexpected = [line for line in errors
                  if not any(f"Element=<{keyword}>" in line for keyword in REM_UNKNOWN)]
    assert unexpected == []


@pytest.mark.parametrize("name", CASES)
def test_dsrdump_parses_the_tree(tmp_path: Path, name: str) -> None:
    path = write_case(tmp_path, name)
    result = subprocess.run([DSRDUMP, str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("X-Ray Radiation Dose SR Document")
    count, dap, _ = CASES[name]
    assert out.count('"Irradiation Event X-Ray Data")=SEPARATE') == count
    for index in range(count):
        assert f'"Irradiation Event UID")="1.2.3.4.5.{index + 1}"' in out
    assert out.count('"KVP")=') == count
    if dap:
        assert out.count("(Gy.m2,UCUM") == count + 1          # each event and the total
    else:
        assert out.count('(114010,DCM,"Value unknown")') == count + 2


def test_series_is_the_reports_own(tmp_path: Path) -> None:
    """dsrdump shows the series description of the report, not an image series."""
    path = write_case(tmp_path, "1-event-dap")
    out = subprocess.run([DSRDUMP, str(path)], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert f"X-Ray Radiation Dose Report (#{SERIES.series_number})" in out
