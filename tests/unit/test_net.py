"""Pure network logic: C-STORE status policy, commitment messages, backoff."""

from __future__ import annotations

import pickle
import ssl
import tokenize
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import Dataset, config
from pydicom.sequence import Sequence
from pynetdicom.sop_class import Verification
from pynetdicom.status import code_to_category
from support.peers import free_port

from agent.errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    PeerUnreachable,
    TlsHandshakeError,
)
from agent.forwarder import backoff_s
from agent.net import ae as net_ae
from agent.net import status as dimse_status
from agent.net.ae import AgentAE, associate
from agent.net.commitment import (
    CommitmentReportError,
    build_commitment_request,
    parse_commitment_report,
)
from agent.net.messages import (
    Associate,
    AssociationFailed,
    AssociationRequest,
    NAction,
    Outcome,
    SendError,
    StoreOutcome,
)
from agent.net.status import Category, StoreVerdict, classify_store_status
from agent.net.tls import PeerTls, TlsIdentity

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


# --- the network boundary: one status module, typed messages, errors raised by type -------------

AGENT_SOURCES = Path(__file__).resolve().parents[2] / "agent"


def test_status_codes_are_named_and_mapped_in_one_module() -> None:
    """0x0110 was defined in three modules and statuses mapped in five (issue 14, item 4): in
    code (comments aside), only agent/net/status.py names these codes or pynetdicom's tables."""
    named = {0x0110, 0x0111, 0x0115, 0x0118, 0x0211, 0xA710}
    offenders = []
    for path in sorted(AGENT_SOURCES.rglob("*.py")):
        if path.relative_to(AGENT_SOURCES) == Path("net/status.py"):
            continue
        with path.open("rb") as source:
            for token in tokenize.tokenize(source.readline):
                if token.type == tokenize.NUMBER and token.string.lower().startswith("0x") \
                        and int(token.string, 16) in named:
                    offenders.append(f"{path.relative_to(AGENT_SOURCES)}:{token.start[0]} "
                                     f"{token.string}")
                elif token.type == tokenize.NAME and token.string == "code_to_category":
                    offenders.append(f"{path.relative_to(AGENT_SOURCES)}:{token.start[0]} "
                                     "code_to_category")
    assert offenders == []


@pytest.mark.parametrize(("code", "category"), [
    (0x0000, Category.SUCCESS), (0xFF00, Category.PENDING), (0xFF01, Category.PENDING),
    (0xFE00, Category.CANCEL), (0xB000, Category.WARNING), (0x0001, Category.WARNING),
    (0x0110, Category.FAILURE), (0xA700, Category.FAILURE), (0xC001, Category.FAILURE),
])
def test_status_categories_are_pynetdicoms(code: int, category: Category) -> None:
    assert dimse_status.category(code) is category
    assert category == code_to_category(code)


def test_status_names_come_from_the_standards_tables() -> None:
    assert dimse_status.meaning(0x0122) == "refused: SOP class not supported"
    assert dimse_status.find_meaning(0xC001) == "unable to process"
    assert dimse_status.status_code(status(0xA701)) == 0xA701
    assert dimse_status.status_code(Dataset()) is None
    result = classify_store_status(status(0xA701))
    assert (result.verdict, result.text) == (StoreVerdict.RETRY,
                                             "0xA701 refused: out of resources")
    assert classify_store_status(status(0xB006)).text == "0xB006 warning: element discarded"
    # a warning code the Storage Service Class does not define is not taken as stored
    assert classify_store_status(status(0x0107)).verdict is StoreVerdict.FAILED


@pytest.mark.parametrize("error", [
    PeerUnreachable("no connection to h:1 (connection refused)"),
    AssociationRejected("association rejected for now (local limit exceeded)", transient=True),
    AssociationAborted("association aborted"),
    TlsHandshakeError("TLS handshake with h:1 failed: certificate has expired",
                      reason="certificate has expired"),
])
def test_a_failed_association_crosses_the_process_boundary_as_its_type(
        error: AssociationError) -> None:
    message = pickle.loads(pickle.dumps(AssociationFailed.from_error(error)))  # noqa: S301
    again = message.error()
    assert type(again) is type(error)
    assert str(again) == str(error)
    if isinstance(error, TlsHandshakeError):
        assert isinstance(again, TlsHandshakeError) and again.reason == error.reason
    if isinstance(error, AssociationRejected):
        assert isinstance(again, AssociationRejected) and again.transient


def test_sending_process_messages_are_typed_and_picklable() -> None:
    identity = TlsIdentity(Path("/etc/a.crt"), Path("/etc/a.key"), Path("/etc/ca.crt"))
    request = AssociationRequest("AGENT", "pacs", 104, "PACS", ((SC, ("1.2.840.10008.1.2",)),),
                                 30.0, tls=PeerTls(identity, verify_hostname=False))
    for message in (Associate(request), Outcome(StoreOutcome(3, error=SendError.NO_CONTEXT)),
                    NAction("1.2.3", ((SC, "1.2.3.4"),), 5.0)):
        assert pickle.loads(pickle.dumps(message)) == message  # noqa: S301
    assert StoreOutcome(3, error=SendError.UNREADABLE).error == "unreadable"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_refused_connection_is_peer_unreachable() -> None:
    ae = AgentAE("AGENT")
    ae.add_requested_context(Verification)
    port = free_port()
    with pytest.raises(PeerUnreachable, match=rf"^no connection to 127\.0\.0\.1:{port} "
                                              r"\(connection refused\)$") as caught:
        associate(ae, "127.0.0.1", port, "ANY")
    assert isinstance(caught.value, ConnectionError)
    assert not isinstance(caught.value, TlsHandshakeError)


def test_tls_that_cannot_be_set_up_is_never_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    """A context that cannot be built is a TLS error before any connection is made."""
    def broken(tls: PeerTls) -> ssl.SSLContext:
        raise ValueError("/etc/a.key: not found")

    monkeypatch.setattr(net_ae, "client_context", broken)
    ae = AgentAE("AGENT")
    ae.add_requested_context(Verification)
    identity = TlsIdentity(Path("/etc/a.crt"), Path("/etc/a.key"), Path("/etc/ca.crt"))
    with pytest.raises(TlsHandshakeError, match=r"not set up: /etc/a\.key: not found"):
        associate(ae, "127.0.0.1", free_port(), "ANY", tls=PeerTls(identity))
