"""Procedures without MPPS: one study per procedure, ends validated, old ones forgotten."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.iod import UIDSource
from agent.procedures import KEEP_ENDED, ProcedureError, Procedures
from agent.records import Order, SOPReference

SC = "1.2.840.10008.5.1.4.1.1.7"


def make() -> Procedures:
    return Procedures(uids=UIDSource(), mpps=None, modality="OT", protocol_name="test")


def test_one_study_per_unscheduled_procedure_and_reuse_while_open() -> None:
    procedures = make()
    order = Order(patient_name="A^B", patient_id="P1")
    first = procedures.open_for(order)
    assert first.order.study_instance_uid is not None
    assert procedures.open_for(order) is first                  # same patient, still open
    assert procedures.open_for(Order(patient_name="C^D", patient_id="P2")) is not first
    procedures.record_series(first, "2.25.1", [SOPReference(SC, "2.25.2")])
    procedures.end(first.procedure_id, "completed")
    again = procedures.open_for(order)
    assert again is not first and again.order.study_instance_uid != first.order.study_instance_uid


def test_ending_is_checked() -> None:
    procedures = make()
    procedure = procedures.start(Order(patient_name="A^B", patient_id="P1"))
    with pytest.raises(ProcedureError, match="no images"):
        procedures.end(procedure.procedure_id, "completed")
    with pytest.raises(ProcedureError, match="unknown discontinuation reason"):
        procedures.end(procedure.procedure_id, "discontinued", "999")
    procedures.end(procedure.procedure_id, "discontinued", "110513")
    with pytest.raises(ProcedureError, match="already discontinued"):
        procedures.end(procedure.procedure_id, "discontinued")
    with pytest.raises(ProcedureError, match="no procedure"):
        procedures.end("nosuch", "completed")


def test_ended_procedures_are_forgotten_beyond_a_bound() -> None:
    procedures = make()
    for index in range(KEEP_ENDED + 30):
        procedure = procedures.start(Order(patient_name="A^B", patient_id=f"P{index}"))
        procedures.end(procedure.procedure_id, "discontinued")
    still_open = procedures.start(Order(patient_name="Open^One", patient_id="OPEN"))
    kept = procedures.all()
    assert len(kept) == KEEP_ENDED + 1 and still_open in kept


# -- open procedures survive a restart (issue 13) ----------------------------------------------
def saved(path: Path) -> Procedures:
    return Procedures(uids=UIDSource(), mpps=None, modality="OT", protocol_name="test",
                      state_path=path)


def test_an_open_procedure_and_the_duplicate_guard_survive_a_restart(tmp_path: Path) -> None:
    import stat

    from agent.records import Code, OtherPatientID

    state = tmp_path / "procedures.json"
    order = Order(patient_name="Müller^Anna", patient_id="P1", study_instance_uid="1.2.3",
                  sps_id="S1", scheduled=True, accession_number="A1",
                  requested_procedure_codes=(Code("X1", "L", "Chest"),),
                  other_patient_ids=(OtherPatientID("O1"),))
    first = saved(state)
    procedure = first.open_for(order)
    first.record_series(procedure, "2.25.1", [SOPReference(SC, "2.25.2")])
    first.mark_acquired("1.2.3", "S1")
    ended = first.start(Order(patient_name="C^D", patient_id="P2"))
    first.end(ended.procedure_id, "discontinued", "110513")
    assert stat.S_IMODE(state.stat().st_mode) == 0o600

    again = saved(state)                                    # the daemon restarted
    resumed = again.get(procedure.procedure_id)
    assert resumed.state == "in_progress" and resumed.order == order
    assert resumed.series == {"2.25.1": [SOPReference(SC, "2.25.2")]}
    assert again.open_for(order) is resumed                 # acquiring goes on into it
    assert again.get(ended.procedure_id).state == "discontinued"
    assert again.was_acquired("1.2.3", "S1") and not again.was_acquired("1.2.3", "S2")
    again.end(procedure.procedure_id, "completed")
    assert saved(state).get(procedure.procedure_id).state == "completed"


def test_a_procedures_file_that_is_not_ours_is_refused_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "procedures.json"
    for content in (b"{not json", b'{"version": 99}', b'{"version": 1, "procedures": [{}]}'):
        state.write_bytes(content)
        with pytest.raises(ProcedureError, match=r"procedures\.json: not a procedures file"):
            saved(state)
        assert state.read_bytes() == content
