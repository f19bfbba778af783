"""Hypothesis: whatever lands in the watch folder, poll() never raises, nothing but complete
DICOM (or an object made from a whole PNG/JPEG) is queued, and every other file is rejected
with a one-line reason (issue 13, finding 9)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_watchfolder import DEVICE, ORDER, FakeClock, Procedure, dicom_bytes, gray_png

from agent.importer import ImportRefused, check_part10_complete, parse_dicom_bytes
from agent.iod import UIDSource
from agent.queue import QueueStore
from agent.watchfolder import INCOMPLETE_WAIT_S, TEMP_SUFFIXES, WatchFolder

SETTLE_S = 1.0
RESCAN_S = 5.0
FULL_DICOM = dicom_bytes(seed=3, uid="2.25.314159")
FULL_PNG = gray_png(4)

#: names as a careless or hostile sender makes them: controls, bidi, spaces, non-ASCII
names = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1, max_size=30,
).filter(lambda n: n not in (".", "..") and not n.startswith(".")
         and not n.endswith(TEMP_SUFFIXES) and len(n.encode()) < 200)

contents = st.one_of(
    st.binary(max_size=600),
    st.integers(0, len(FULL_DICOM)).map(lambda k: FULL_DICOM[:k]),
    st.integers(0, len(FULL_PNG)).map(lambda k: FULL_PNG[:k]),
    st.binary(max_size=400).map(lambda b: b"\x00" * 128 + b"DICM" + b),
    st.tuples(st.integers(132, len(FULL_DICOM) - 1), st.binary(min_size=1, max_size=8)).map(
        lambda cut: FULL_DICOM[:cut[0]] + cut[1] + FULL_DICOM[cut[0] + len(cut[1]):]),
    st.binary(max_size=300).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
    st.binary(max_size=300).map(lambda b: b"\xff\xd8\xff" + b),
)


def _complete_dicom(payload: bytes) -> bool:
    try:
        check_part10_complete(payload)
        parse_dicom_bytes(payload)
    except ImportRefused:
        return False
    return True


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(files=st.dictionaries(names, contents, min_size=1, max_size=4))
def test_the_watch_folder_takes_only_complete_files_and_rejects_the_rest_with_a_reason(
        files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = QueueStore(root / "spool", ["pacs"])
        store.open()
        try:
            clock = FakeClock()
            wf = WatchFolder(root / "in", queue=store, image_order=Procedure(ORDER),
                             device=DEVICE, uids=UIDSource(), settle_s=SETTLE_S,
                             rescan_s=RESCAN_S, clock=clock)
            wf.prepare()
            for name, payload in files.items():
                (wf.folder / name).write_bytes(payload)
            results = wf.poll()                            # never raises
            for step in (SETTLE_S, INCOMPLETE_WAIT_S, RESCAN_S):
                clock.advance(step)
                results += wf.poll()
            left = [n for n in os.listdir(wf.folder) if n not in ("done", "rejected", ".state")]
            assert left == [], f"still waiting: {left!r} {results!r}"
            queued = store.conn.execute("SELECT queue_id FROM objects").fetchall()
            for (queue_id,) in queued:
                assert _complete_dicom(store.object_path(queue_id).read_bytes())
            for name, payload in files.items():
                if payload[128:132] == b"DICM" and (wf.done_dir / name).exists():
                    # a dropped DICOM file is queued byte for byte: whole, or not at all
                    assert _complete_dicom(payload)
            rejected = sorted(os.listdir(wf.rejected_dir))
            for entry in rejected:
                if entry.endswith(".reason.txt"):
                    continue
                reason = (wf.rejected_dir / f"{entry}.reason.txt").read_text()
                assert reason.endswith("\n") and reason.count("\n") == 1 and len(reason) > 5
            taken = len(os.listdir(wf.done_dir)) + len(
                [e for e in rejected if not e.endswith(".reason.txt")])
            assert taken == len(files)
            assert len(queued) == len(os.listdir(wf.done_dir))
        finally:
            store.close()


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, len(FULL_DICOM)), at=st.integers(0, len(FULL_DICOM) - 1),
       noise=st.binary(max_size=12))
def test_parsing_a_damaged_dicom_file_raises_only_import_refused(cut: int, at: int,
                                                                 noise: bytes) -> None:
    damaged = (FULL_DICOM[:at] + noise + FULL_DICOM[at + len(noise):])[:cut]
    try:
        item = parse_dicom_bytes(damaged)
    except ImportRefused as err:
        assert err.reason and "\n" not in err.reason
        return
    assert item.payload == damaged
    check_part10_complete(damaged)
