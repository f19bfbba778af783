"""Procedures without MPPS: one study per procedure, ends validated, old ones forgotten."""

from __future__ import annotations

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
