"""Pure network logic: C-STORE status policy, commitment messages, backoff."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydicom import Dataset, config
from pydicom.sequence import Sequence

from agent.forwarder import backoff_s
from agent.net.commitment import (
    CommitmentReportError,
    build_commitment_request,
    parse_commitment_report,
)
from agent.net.status import StoreVerdict, classify_store_status

SC = "1.2.840.10008.5.1.4.1.1.7"


def status(code: int) -> Dataset:
    ds = Dataset()
    ds.Status = code
    return ds


@pytest.mark.parametrize(("code", "verdict"), [
    (0x0000, StoreVerdict.STORED),
    (0xB000, StoreVerdict.STORED), (0xB006, StoreVerdict.STORED), (0xB007, StoreVerdict.STORED),
    (0xA700, StoreVerdict.RETRY), (0xA7FF, StoreVerdict.RETRY),
    (0xA900, StoreVerdict.FAILED), (0xC000, StoreVerdict.FAILED), (0xC123, StoreVerdict.FAILED),
    (0x0122, StoreVerdict.FAILED), (0x0124, StoreVerdict.FAILED),
])
def test_store_status_policy(code: int, verdict: StoreVerdict) -> None:
    result = classify_store_status(status(code))
    assert result.verdict is verdict and result.status == code
    assert f"0x{code:04X}" in result.text


def test_no_status_is_outcome_unknown() -> None:
    # pynetdicom returns an empty Dataset on timeout, abort or an invalid response
    assert classify_store_status(Dataset()).verdict is StoreVerdict.UNKNOWN
    assert classify_store_status(None).verdict is StoreVerdict.UNKNOWN


def report(transaction_uid: str = "2.25.1", committed=((SC, "2.25.10"),), failed=()) -> Dataset:
    ds = Dataset()
    if transaction_uid is not None:
        ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in committed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    if failed:
        f_items = []
        for sop_class, sop_instance, reason in failed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            item.FailureReason = reason
            f_items.append(item)
        ds.FailedSOPSequence = Sequence(f_items)
    return ds


def test_request_and_report_round_trip() -> None:
    request = build_commitment_request("2.25.1", [(SC, "2.25.10"), (SC, "2.25.11")])
    assert request.TransactionUID == "2.25.1"
    assert [i.ReferencedSOPInstanceUID for i in request.ReferencedSOPSequence] == \
        ["2.25.10", "2.25.11"]
    result = parse_commitment_report(2, report(failed=((SC, "2.25.11", 0x0112),)))
    assert result.transaction_uid == "2.25.1"
    assert result.committed == ((SC, "2.25.10"),)
    assert result.failed == ((SC, "2.25.11", 0x0112),)


@pytest.mark.parametrize(("event_type", "make", "message"), [
    (3, lambda: report(), "Event Type ID"),
    (1, lambda: None, "no Event Information"),
    (1, lambda: report(transaction_uid="../../x"), "Transaction UID"),
    (1, lambda: report(transaction_uid=""), "Transaction UID"),
    (1, lambda: report(committed=((SC, "1.02.3"),)), "invalid"),
    (1, lambda: report(committed=((SC, "1." + "2" * 70),)), "invalid"),
    (1, lambda: report(failed=((SC, "2.25.3", 0x0110),)), "Failed SOP Sequence present"),
])
def test_bad_reports_are_refused(event_type: int, make: Callable[[], Dataset | None],
                                 message: str) -> None:
    # what a hostile or broken archive may send: build it without pydicom's own checks
    with config.disable_value_validation():
        ds = make()
    with pytest.raises(CommitmentReportError, match=message):
        parse_commitment_report(event_type, ds)


def test_failed_item_without_reason_is_refused() -> None:
    ds = report(failed=((SC, "2.25.3", 0x0112),))
    del ds.FailedSOPSequence[0].FailureReason
    with pytest.raises(CommitmentReportError, match="Failure Reason"):
        parse_commitment_report(2, ds)


def test_backoff_grows_caps_and_jitters() -> None:
    top = [backoff_s(n, initial_s=2, max_s=300, rng=lambda: 1.0) for n in range(1, 12)]
    assert top[:4] == [2, 4, 8, 16] and max(top) == 300 and top[-1] == 300
    assert backoff_s(0, initial_s=2, max_s=300) == 0
    assert backoff_s(3, initial_s=2, max_s=300, rng=lambda: 0.0) == 4    # half of 8
    assert backoff_s(10_000, initial_s=2, max_s=300, rng=lambda: 1.0) == 300
