"""STOW-RS to a DICOMweb-only Orthanc (orthanc-dicomweb, no DIMSE port), issue 19 items 1
and 4: through the real daemon (delivery committed by QIDO-RS, outage and return, a wrong
password) and through the StowWorker on a real queue (a per-instance refusal, a response lost
mid-request: the same bytes again, stored once)."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.agent_process import AgentProcess, make_agent
from support.faultproxy import FaultProxy
from support.peers import LOCALHOST, free_port, wait_until

from agent.config import DestinationSection, QueueSection
from agent.demo.orthanc import DICOMWEB_PLUGIN, OrthancServer, start_orthanc
from agent.iod import UIDSource, build_image, encode_part10
from agent.queue import QueueStore
from agent.records import DeliveryState, DeviceInfo, Order, SeriesContext
from agent.stow_forwarder import StowWorker
from drivers.frame import Frame
from drivers.simulated import phantom

pytestmark = pytest.mark.integration

S = DeliveryState
EXPLICIT = "1.2.840.10008.5.1.4.1.1.7"
DEVICE = DeviceInfo(modality="OT", manufacturer="Example Medical", model_name="Example-1",
                    device_serial_number="0001", station_name="ROOM1",
                    institution_name="Klinikum", software_versions="fw 2.1")
ORDER = Order(patient_name="Stow^Test", patient_id="STOW-1", patient_birth_date="19700101",
              patient_sex="O")


# -- peers ---------------------------------------------------------------------------------------

def start_web_orthanc(workdir: Path, http_port: int | None = None,
                      extra_config: dict[str, Any] | None = None) -> OrthancServer:
    """Orthanc with the DICOMweb plugin (root /dicom-web/, its default) and no DICOM port."""
    return start_orthanc(workdir, dicom_port=free_port(), http_port=http_port or free_port(),
                         plugins=(DICOMWEB_PLUGIN,), dicom_server=False,
                         extra_config=extra_config)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    server = start_web_orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        server.stop()


def stow_toml(name: str, url: str, *, verify: bool = True, extra: str = "") -> str:
    return (f'[[destinations]]\nname = "{name}"\nkind = "stow-rs"\nurl = "{url}"\n'
            f"verify = {'true' if verify else 'false'}\nrequest_timeout_s = 10\n{extra}")


def web_agent(tmp_path: Path, url: str, *, extra: str = "") -> AgentProcess:
    return make_agent(tmp_path, [], extra_toml=stow_toml("web", url, extra=extra))


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    try:
        yield started
    finally:
        for agent in started:
            agent.stop()


def acquire(agent: AgentProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    return agent.cli("acquire", "--unscheduled", "--patient-id", "STOW-1", "--patient-name",
                     "Stow^Test", "--frames", "1", "--json", *extra)


def acquired_uid(result: subprocess.CompletedProcess[str]) -> str:
    [obj] = json.loads(result.stdout)["objects"]
    return str(obj["sop_instance_uid"])


def spool_bytes(agent: AgentProcess, uid: str) -> bytes:
    [row] = [r for r in agent.queue_rows() if r["sop_instance_uid"] == uid]
    return (agent.spool_dir / "objects" / f"{row['queue_id']:010d}.dcm").read_bytes()


def web_status(agent: AgentProcess) -> dict[str, Any]:
    [dest] = [d for d in agent.api("GET", "/api/status")["destinations"] if d["name"] == "web"]
    return dict(dest)


# -- through the daemon ----------------------------------------------------------------------------

def test_an_object_reaches_a_dicomweb_only_archive_and_is_committed_by_qido(
        tmp_path: Path, orthanc: OrthancServer, agents: list[AgentProcess]) -> None:
    agent = web_agent(tmp_path, f"{orthanc.rest_url}/dicom-web/")
    agents.append(agent)
    agent.start()
    result = acquire(agent, "--wait", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    uid = acquired_uid(result)
    [row] = agent.queue_rows()
    assert row["state"] == "committed" and row["transaction_uid"]
    orthanc_id = orthanc.find_instance(uid)
    assert orthanc_id is not None
    assert orthanc.instance_tags(orthanc_id)["SOPInstanceUID"] == uid
    # the spooled Part 10 file as it is: no re-encode on the way
    assert orthanc.instance_file(orthanc_id) == spool_bytes(agent, uid)
    assert "verified at web by QIDO-RS: 1 committed" in agent.log()
    # echo: a DICOMweb archive has no C-ECHO; a QIDO-RS request stands in
    echo = agent.cli("echo")
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert f"web ({orthanc.rest_url}/dicom-web): OK QIDO-RS HTTP 200" in echo.stdout


def test_outage_and_return_with_no_command(tmp_path: Path,
                                           agents: list[AgentProcess]) -> None:
    port = free_port()
    server = start_web_orthanc(tmp_path / "orthanc", port)
    try:
        agent = web_agent(tmp_path, f"{server.rest_url}/dicom-web")
        agents.append(agent)
        agent.start()
        server.stop()
        uid = acquired_uid(acquire(agent))
        wait_until(lambda: web_status(agent)["reachable"] is False, 10,
                   "the archive to be seen down")
        [row] = agent.queue_rows()
        assert row["state"] == "pending" and "cannot connect" in row["last_error"]
        # the same port and storage again: the agent sends by itself
        server = start_web_orthanc(tmp_path / "orthanc", port)
        wait_until(lambda: agent.queue_rows()[0]["state"] == "committed", 15,
                   "the object to be committed once the archive is back")
        assert server.find_instance(uid) is not None
        assert web_status(agent)["reachable"] is True
    finally:
        server.stop()


#: Orthanc's HTTP filter as a bearer check in front of DICOMweb (Orthanc answers 403 when it
#: returns false); the rest of the REST API stays open for the harness and the test's checks
BEARER_FILTER = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if string.sub(uri, 1, 11) ~= '/dicom-web/' then return true end
  return httpHeaders['authorization'] == 'Bearer right-Token.1'
end
"""


def test_a_wrong_token_is_a_clear_error_and_the_object_waits(
        tmp_path: Path, agents: list[AgentProcess]) -> None:
    (tmp_path / "orthanc").mkdir()
    lua = tmp_path / "orthanc" / "bearer.lua"
    lua.write_text(BEARER_FILTER)
    server = start_web_orthanc(tmp_path / "orthanc", extra_config={"LuaScripts": [str(lua)]})
    try:
        token = tmp_path / "archive-token"
        token.write_text("wrong-Token.9\n")
        token.chmod(0o600)
        agent = web_agent(tmp_path, f"{server.rest_url}/dicom-web",
                          extra=f'token_file = "{token}"\n')
        agents.append(agent)
        agent.start()
        uid = acquired_uid(acquire(agent))
        wait_until(lambda: "403" in web_status(agent)["last_error"], 10,
                   "the refusal to show in status")
        status = web_status(agent)
        assert f"check token_file {token}" in status["last_error"]
        assert status["reachable"] is False
        assert "wrong-Token" not in status["last_error"] and "wrong-Token" not in agent.log()
        [row] = agent.queue_rows()
        assert row["state"] in ("pending", "sending")       # kept, never failed
        assert f"check token_file {token}" in row["last_error"]
        assert server.find_instance(uid) is None
        echo = agent.cli("echo")
        assert echo.returncode != 0 and "FAILED HTTP 403 Forbidden: check token_file" \
            in echo.stdout
        # the file fixed, no restart: delivered
        token.write_text("right-Token.1\n")
        wait_until(lambda: agent.queue_rows()[0]["state"] == "committed", 15,
                   "the object to be committed once the token is right")
        assert server.find_instance(uid) is not None
    finally:
        server.stop()


def test_check_config_refuses_a_token_file_others_may_read(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abcdef\n")
    token.chmod(0o644)
    agent = web_agent(tmp_path, "https://pacs.example/dicom-web",
                      extra=f'token_file = "{token}"\n')
    result = agent.cli("check-config")
    assert result.returncode != 0
    assert "[[destinations]] web token_file" in result.stdout
    assert "chmod 600" in result.stdout and "abcdef" not in result.stdout


# -- through the worker, on a real queue --------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    queue = QueueStore(tmp_path / "spool", ["web"])
    queue.open()
    try:
        yield queue
    finally:
        queue.close()


def queue_images(store: QueueStore, count: int, order: Order = ORDER) -> list[str]:
    uids = UIDSource()
    series = SeriesContext(study_instance_uid=uids.new_uid(), series_instance_uid=uids.new_uid(),
                           study_id="1", series_number=1, study_datetime="20240301093000.000000",
                           series_datetime="20240301093000.000000")
    made = []
    for index in range(count):
        frame = Frame(pixels=phantom(64, 64, 12, index), bits_stored=12,
                      photometric_interpretation="MONOCHROME2", t_mono=float(index),
                      t_wall=1_709_285_400.0 + index, sequence_number=index)
        sop_uid = uids.new_uid()
        ds = build_image("secondary-capture", [frame], order=order, device=DEVICE, series=series,
                         instance_number=index + 1, sop_instance_uid=sop_uid)
        store.enqueue(encode_part10(ds), sop_instance_uid=sop_uid,
                      sop_class_uid=str(ds.SOPClassUID),
                      transfer_syntax_uid="1.2.840.10008.1.2.1")
        made.append(sop_uid)
    return made


def worker(store: QueueStore, url: str, *, verify: bool = True,
           timeout_s: float = 10) -> StowWorker:
    dest = DestinationSection(name="web", kind="stow-rs", url=url, verify=verify,
                              storage_commitment=False, request_timeout_s=timeout_s)
    return StowWorker(dest, queue=store, uids=UIDSource(),
                      queue_config=QueueSection(retry_initial_s=0.1, retry_max_s=0.2))


def states(store: QueueStore) -> dict[str, tuple[S, str]]:
    return {d.sop_instance_uid: (d.state, d.last_error) for d in store.deliveries()}


def run_until(stow: StowWorker, done: Any, what: str, timeout_s: float = 15) -> None:
    def step() -> bool:
        stow.run_once()
        return bool(done())
    wait_until(step, timeout_s, what)


def test_an_instance_the_archive_refuses_fails_alone_the_others_are_committed(
        store: QueueStore, orthanc: OrthancServer) -> None:
    good = queue_images(store, 2)
    # a spooled object Orthanc cannot read: it answers 400 for the whole request, listing
    # the good instances in Referenced SOP Sequence; sent alone it is refused again
    store.enqueue(b"not a DICOM file", sop_instance_uid="2.25.4242",
                  sop_class_uid=EXPLICIT, transfer_syntax_uid="1.2.840.10008.1.2.1")
    stow = worker(store, f"{orthanc.rest_url}/dicom-web")
    try:
        stow.run_once()
    finally:
        stow.stop()
    result = states(store)
    assert [result[uid][0] for uid in good] == [S.COMMITTED, S.COMMITTED]
    state, error = result["2.25.4242"]
    assert state is S.FAILED
    assert "HTTP 400" in error and "refused" in error
    assert all(orthanc.find_instance(uid) is not None for uid in good)
    assert stow.health.failed_total == 1 and stow.health.stored_total == 2


def test_a_response_lost_mid_request_sends_the_same_bytes_again_stored_once(
        store: QueueStore, orthanc: OrthancServer) -> None:
    [uid] = queue_images(store, 1)
    spooled = store.object_path(store.deliveries()[0].queue_id).read_bytes()
    proxy = FaultProxy(orthanc.http_port)
    # the whole request reaches Orthanc, which stores it; its answer never comes back
    proxy.mode, proxy.after_up_bytes = "drop_response", len(spooled)
    stow = worker(store, f"http://{LOCALHOST}:{proxy.port}/dicom-web")
    try:
        stow.run_once()
        [row] = store.deliveries()
        assert row.state is S.PENDING and "outcome unknown" in row.last_error
        assert proxy.faults == 1
        assert orthanc.find_instance(uid) is not None          # it did arrive
        run_until(stow, lambda: store.deliveries()[0].state is S.COMMITTED,
                  "the resend to be committed")
    finally:
        stow.stop()
        proxy.close()
    assert store.deliveries()[0].attempts == 2
    matches = [i for i in orthanc.instances()
               if orthanc.instance_tags(i)["SOPInstanceUID"] == uid]
    assert len(matches) == 1
    assert orthanc.instance_file(matches[0]) == spooled


def test_a_timeout_mid_request_is_outcome_unknown_then_sent_again(
        store: QueueStore, orthanc: OrthancServer) -> None:
    [uid] = queue_images(store, 1)
    proxy = FaultProxy(orthanc.http_port)
    # the connection goes silent after the headers: the request times out unanswered
    proxy.mode, proxy.after_up_bytes = "stall_after", 100
    stow = worker(store, f"http://{LOCALHOST}:{proxy.port}/dicom-web", timeout_s=1)
    try:
        stow.run_once()
        [row] = store.deliveries()
        assert row.state is S.PENDING and "outcome unknown" in row.last_error
        run_until(stow, lambda: store.deliveries()[0].state is S.COMMITTED,
                  "the resend to be committed")
    finally:
        stow.stop()
        proxy.close()
    assert orthanc.find_instance(uid) is not None


# -- an archive that answers per instance as the standard shows it ------------------------------

class _StandardArchive(http.server.BaseHTTPRequestHandler):
    """A STOW-RS origin server that reads the request and answers 202 with one instance
    stored, one failed with 0xC000 (cannot understand) and one with 0xA700 (out of resources):
    Orthanc answers Failed SOP Sequence only for an instance of another study posted to
    /studies/{uid}, which the agent never does."""

    uids: tuple[str, str, str] = ("", "", "")
    requests = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests += 1
        stored, refused, busy = self.uids

        def item(uid: str, reason: int | None = None) -> dict[str, Any]:
            found: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [EXPLICIT]},
                                     "00081155": {"vr": "UI", "Value": [uid]}}
            if reason is not None:
                found["00081197"] = {"vr": "US", "Value": [reason]}
            return found
        body = json.dumps({
            "00081199": {"vr": "SQ", "Value": [item(stored)]},
            "00081198": {"vr": "SQ", "Value": [item(refused, 0xC000), item(busy, 0xA700)]},
        }).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_failed_sop_sequence_reasons_fail_or_retry_each_instance(store: QueueStore) -> None:
    uids = queue_images(store, 3)
    _StandardArchive.uids = (uids[0], uids[1], uids[2])
    server = http.server.ThreadingHTTPServer((LOCALHOST, 0), _StandardArchive)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stow = worker(store, f"http://{LOCALHOST}:{server.server_address[1]}/web", verify=False)
    try:
        stow.run_once()
    finally:
        stow.stop()
        server.shutdown()
        server.server_close()
        thread.join(5)
    result = states(store)
    assert _StandardArchive.requests == 1
    assert result[uids[0]][0] is S.SENT                   # stored; without verify: done
    assert result[uids[1]][0] is S.FAILED and "0xC000" in result[uids[1]][1]
    assert result[uids[2]][0] is S.PENDING and "0xA700" in result[uids[2]][1]


#: an archive rule that drops some objects: Orthanc 1.10 with DICOMweb 1.7 still answers them in
#: Referenced SOP Sequence (HTTP 200) without storing them
DROP_FILTER = """
function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.PatientID ~= 'DROPPED-1'
end
"""


def test_verify_catches_an_archive_that_says_stored_and_drops_the_object(
        tmp_path: Path, store: QueueStore) -> None:
    (tmp_path / "orthanc").mkdir()
    lua = tmp_path / "orthanc" / "drop.lua"
    lua.write_text(DROP_FILTER)
    server = start_web_orthanc(tmp_path / "orthanc", extra_config={"LuaScripts": [str(lua)]})
    [kept] = queue_images(store, 1)
    [dropped] = queue_images(store, 1, Order(patient_name="Dropped^Test",
                                             patient_id="DROPPED-1"))
    stow = worker(store, f"{server.rest_url}/dicom-web")
    try:
        run_until(stow, lambda: states(store)[dropped][0] is S.FAILED,
                  "the dropped object to fail after repeated misses")
    finally:
        stow.stop()
        server.stop()
    result = states(store)
    assert result[kept][0] is S.COMMITTED
    assert "QIDO-RS never found" in result[dropped][1]
    assert [d.attempts for d in store.deliveries() if d.sop_instance_uid == dropped] == [5]
