"""Discontinuation reasons for PPS Discontinuation Reason Code Sequence (0040,0281).

PS3.3 Table C.4-14 names the Baseline CID 9300 "Procedure Discontinuation Reason"; CID 9300
includes CID 9301 "Modality PPS Discontinuation Reason", the codes below. Code values and
meanings are those of PS3.16 Table D-1 (scheme DCM), as bundled with pydicom 3.0.2
(`pydicom.sr._concepts_dict`); the US spelling "canceled" is the standard's.
"""

from __future__ import annotations

from agent.mpps.errors import MppsValueError
from agent.records import Code

DCM = "DCM"

DOCTOR_CANCELED_PROCEDURE = Code("110500", DCM, "Doctor canceled procedure")
EQUIPMENT_FAILURE = Code("110501", DCM, "Equipment failure")
INCORRECT_PROCEDURE_ORDERED = Code("110502", DCM, "Incorrect procedure ordered")
PATIENT_ALLERGIC_TO_MEDIA_CONTRAST = Code("110503", DCM, "Patient allergic to media/contrast")
PATIENT_DIED = Code("110504", DCM, "Patient died")
PATIENT_REFUSED_TO_CONTINUE = Code("110505", DCM, "Patient refused to continue procedure")
PATIENT_TAKEN_FOR_TREATMENT = Code("110506", DCM, "Patient taken for treatment or surgery")
PATIENT_DID_NOT_ARRIVE = Code("110507", DCM, "Patient did not arrive")
PATIENT_PREGNANT = Code("110508", DCM, "Patient pregnant")
CHANGE_OF_PROCEDURE_FOR_CHARGING = Code("110509", DCM,
                                        "Change of procedure for correct charging")
DUPLICATE_ORDER = Code("110510", DCM, "Duplicate order")
NURSING_UNIT_CANCEL = Code("110511", DCM, "Nursing unit cancel")
INCORRECT_SIDE_ORDERED = Code("110512", DCM, "Incorrect side ordered")
DISCONTINUED_FOR_UNSPECIFIED_REASON = Code("110513", DCM, "Discontinued for unspecified reason")
INCORRECT_WORKLIST_ENTRY_SELECTED = Code("110514", DCM, "Incorrect worklist entry selected")
PATIENT_CONDITION_PREVENTED_CONTINUING = Code("110515", DCM,
                                              "Patient condition prevented continuing")
EQUIPMENT_CHANGE = Code("110516", DCM, "Equipment change")

#: CID 9301, by code value: what a console offers the technologist
DISCONTINUATION_REASONS: dict[str, Code] = {code.value: code for code in (
    DOCTOR_CANCELED_PROCEDURE,
    EQUIPMENT_FAILURE,
    INCORRECT_PROCEDURE_ORDERED,
    PATIENT_ALLERGIC_TO_MEDIA_CONTRAST,
    PATIENT_DIED,
    PATIENT_REFUSED_TO_CONTINUE,
    PATIENT_TAKEN_FOR_TREATMENT,
    PATIENT_DID_NOT_ARRIVE,
    PATIENT_PREGNANT,
    CHANGE_OF_PROCEDURE_FOR_CHARGING,
    DUPLICATE_ORDER,
    NURSING_UNIT_CANCEL,
    INCORRECT_SIDE_ORDERED,
    DISCONTINUED_FOR_UNSPECIFIED_REASON,
    INCORRECT_WORKLIST_ENTRY_SELECTED,
    PATIENT_CONDITION_PREVENTED_CONTINUING,
    EQUIPMENT_CHANGE,
)}


def discontinuation_reason(code_value: str) -> Code:
    """The CID 9301 code with this code value (e.g. "110513"), for the API and the CLI.

    Raises
    ------
    MppsValueError
        If `code_value` is not one of DISCONTINUATION_REASONS; the message lists them.
    """
    try:
        return DISCONTINUATION_REASONS[code_value]
    except KeyError:
        known = ", ".join(f"{c.value} {c.meaning}" for c in DISCONTINUATION_REASONS.values())
        raise MppsValueError(f"unknown discontinuation reason {code_value!r}; known: "
                             f"{known}") from None
