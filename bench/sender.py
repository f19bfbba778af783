"""One timed send, in its own process: `python -m bench.sender TOOL ... --result FILE` writes one
JSON object (a file, not stdout: under py-spy the child's output is mixed with py-spy's).

Each sender runs in a fresh process so that no tool inherits another's threads, GIL or
pynetdicom settings (agent.forwarder switches pynetdicom to chunked sending at import). The
clock starts after imports and stops after the association is released.

Tools
-----
agent
    The agent's forwarder (agent.forwarder.DestinationWorker), as the daemon builds it: as many
    workers as the destination's `max_associations`, started on their threads, sending the
    rows of one destination of a spool filled by QueueStore. Every row is reset to pending
    first, through the queue's own API, so each repeat sends the same spooled bytes. With
    `--tls-certificate/--tls-key/--tls-ca` the workers get a PeerTls, so each sending process
    opens its association through agent.net.ae.associate(tls=...) exactly as the daemon does.
pynetdicom-one / pynetdicom-per-object
    Plain pynetdicom as a user would write it (dcmread, send_c_store), over one association
    or a new association per object; its sockets get TCP_NODELAY, as everywhere in the bench.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, descendants


def _nodelay_ae() -> Any:
    from pynetdicom import AE
    from pynetdicom.transport import AssociationSocket

    class NoDelaySocket(AssociationSocket):  # type: ignore[misc]
        def _create_socket(self, address: Any) -> socket.socket:
            sock: socket.socket = super()._create_socket(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock

    class NoDelayAE(AE):  # type: ignore[misc]
        def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> Any:
            sock = NoDelaySocket(assoc, address=address)
            sock.tls_args = tls_args
            return sock

    return NoDelayAE


def send_pynetdicom(paths: list[Path], host: str, port: int, called_ae: str, *,
                    per_object: bool) -> dict[str, Any]:
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ae = _nodelay_ae()(ae_title="BENCHPYNET")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.7",
                             [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    failed = 0
    max_pdu = None
    cpu0 = _tree_cpu_seconds()
    t0 = time.perf_counter()
    assoc = None
    try:
        for path in paths:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate(host, port, ae_title=called_ae)
                if not assoc.is_established:
                    raise RuntimeError(f"association to {host}:{port} failed")
                max_pdu = assoc.acceptor.maximum_length
            status = assoc.send_c_store(dcmread(path))
            if status is None or int(status.get("Status", -1)) != 0:
                failed += 1
            if per_object:
                assoc.release()
                assoc = None
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "objects": len(paths), "failed": failed,
            "negotiated_max_pdu": max_pdu, "cpu_s": _tree_cpu_seconds() - cpu0}


def send_agent(spool: Path, destination: str, host: str, port: int, called_ae: str,
               max_associations: int | None, tls: Any = None) -> dict[str, Any]:
    from agent.config import DestinationSection, QueueSection
    from agent.forwarder import DestinationHealth, DestinationWorker
    from agent.iod import UIDSource
    from agent.logsetup import setup_logging
    from agent.queue import QueueStore
    from agent.records import DeliveryState

    setup_logging("INFO")        # as the daemon runs by default; stderr goes to a log file
    store = QueueStore(spool, [destination], min_free_bytes=0)
    store.open()
    try:
        rows = store.deliveries(destination=destination, limit=1_000_000)
        total = len(rows)
        again = [d.delivery_id for d in rows
                 if d.state not in (DeliveryState.PENDING, DeliveryState.FAILED)]
        if again:
            store.mark_retry(again, "bench: next run", time.time() - 1)
        failed_ids = sorted({d.queue_id for d in rows if d.state is DeliveryState.FAILED})
        if failed_ids:
            store.retry(failed_ids)
        kwargs: dict[str, Any] = {}
        if max_associations is not None:
            kwargs["max_associations"] = max_associations
        section = DestinationSection(destination, host, port, called_ae,
                                     storage_commitment=False, **kwargs)
        done = threading.Event()

        def finished() -> bool:
            counts = store.counts().get(destination, {})
            return counts.get("sent", 0) + counts.get("failed", 0) >= total

        def on_change() -> None:
            if finished():
                done.set()

        params = inspect.signature(DestinationWorker).parameters
        several = "index" in params and "health" in params
        n_workers = max(1, getattr(section, "max_associations", 1)) if several else 1
        health = DestinationHealth(destination)
        workers = []
        for index in range(n_workers):
            extra: dict[str, Any] = {"index": index, "health": health} if several else {}
            if tls is not None:
                extra["tls"] = tls
            workers.append(DestinationWorker(
                section, ae_title="MODALITY1", queue=store, queue_config=QueueSection(),
                uids=UIDSource(), report_handler=lambda report: 0x0000,
                on_change=on_change, **extra))
        for worker in workers:
            # the daemon starts its sending processes at start-up, before there is work
            # (the restart scenario times that); here the clock starts once they are up
            if hasattr(worker, "wait_ready"):
                worker.wait_ready()
        latencies = _record_round_trips()
        cpu0 = _tree_cpu_seconds()
        t0 = time.perf_counter()
        for worker in workers:
            worker.start()
        while not done.wait(0.25):
            if finished():
                break
        seconds = time.perf_counter() - t0
        # before stop(): the sending processes end there and their /proc entries with them
        cpu = _tree_cpu_seconds() - cpu0
        for worker in workers:
            worker.stop()
        counts = store.counts().get(destination, {})
        return {"seconds": seconds, "objects": total, "failed": total - counts.get("sent", 0),
                "workers": n_workers, "negotiated_max_pdu": health.negotiated_max_pdu,
                "cpu_s": cpu, "latencies_s": latencies,
                "sending_processes": _sending_processes()}
    finally:
        store.close()


def _record_round_trips() -> list[float]:
    """Every C-STORE round trip the sending processes report (StoreOutcome.seconds), in the
    order the outcomes arrive; the list fills while the workers run."""
    from agent.net import store_process

    seconds: list[float] = []
    original = store_process.StoreProcess.store

    def store(self: Any, items: Any) -> Any:
        for outcome in original(self, items):
            if outcome.error is None and not outcome.not_sent:
                seconds.append(outcome.seconds)
            yield outcome

    store_process.StoreProcess.store = store  # type: ignore[method-assign]
    return seconds


def _sending_processes() -> int:
    """How many sending processes run below this one (named by agent.net.zygote)."""
    from agent.net.zygote import CHILD_NAME

    count = 0
    for pid in descendants(os.getpid()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == CHILD_NAME:
                count += 1
        except OSError:
            pass
    return count


def _tree_cpu_seconds() -> float:
    """utime + stime of this process (the forwarder, as in the daemon) and of every process
    it started (the sending processes), from /proc."""
    total = 0.0
    # descendants, not children: the sending processes are forked by agent.net.zygote, a
    # child of this process
    for pid in [os.getpid(), *descendants(os.getpid())]:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass            # ended between listing and reading
    return total


def _peer_tls(args: argparse.Namespace) -> Any:
    """The PeerTls of `--tls-*`, None without them."""
    if args.tls_certificate is None:
        return None
    from agent.net.tls import PeerTls, TlsIdentity

    return PeerTls(TlsIdentity(args.tls_certificate, args.tls_key, args.tls_ca))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sender")
    parser.add_argument("tool", choices=["agent", "pynetdicom-one", "pynetdicom-per-object"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--called-ae", required=True)
    parser.add_argument("--spool", type=Path, help="agent: the spool folder")
    parser.add_argument("--destination", help="agent: the destination name in the spool")
    parser.add_argument("--max-associations", type=int)
    parser.add_argument("--files", type=Path, help="pynetdicom: a file listing one path per line")
    parser.add_argument("--tls-certificate", type=Path, help="agent: DICOM TLS with this "
                        "certificate (with --tls-key and --tls-ca)")
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--tls-ca", type=Path)
    parser.add_argument("--result", type=Path, required=True, help="where to write the JSON")
    args = parser.parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if args.tool == "agent":
        result = send_agent(args.spool, args.destination, args.host, args.port, args.called_ae,
                            args.max_associations, _peer_tls(args))
    else:
        paths = [Path(p) for p in args.files.read_text().split("\n") if p]
        result = send_pynetdicom(paths, args.host, args.port, args.called_ae,
                                 per_object=args.tool == "pynetdicom-per-object")
    args.result.write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
