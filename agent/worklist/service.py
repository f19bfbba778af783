"""The worklist the daemon shows: refreshed from the RIS on a timer with jitter, kept in an
offline cache, marked where acquiring again would duplicate a procedure.

One `WorklistService` per daemon. `start()` runs a daemon thread that queries the RIS at once
and then every `refresh_s` (± `jitter_fraction`, so that a ward of modalities does not hit the
RIS in step); `refresh_now()` does the same in the caller's thread. A failed query never
clears the list: the last good answer (from this run or from the cache file) stays, with its
age and the reason the RIS was not used.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydicom import Dataset

from agent.audit.spool import AuditUnavailable
from agent.config import WorklistSection
from agent.errors import AgentError
from agent.net.tls import PeerTls
from agent.worklist.cache import CachedWorklist, WorklistCache
from agent.worklist.charset import DEFAULT_FALLBACK
from agent.worklist.errors import (
    InvalidWorklistQuery,
    RISUnreachable,
    WorklistCacheError,
    WorklistItemAmbiguous,
    WorklistItemNotFound,
    WorklistQueryError,
)
from agent.worklist.model import WorklistItem, WorklistSnapshot
from agent.worklist.query import (
    DEFAULT_MAX_RESULTS,
    DEFAULT_TIMEOUT_S,
    BroadQuery,
    FindResult,
    PatientQuery,
    Query,
    build_identifier,
    find_worklist,
)

logger = logging.getLogger(__name__)

#: (Study Instance UID, SPS ID) -> True if this agent already acquired that step
AcquiredLookup = Callable[[str, str], bool]

#: told of each C-FIND issued to the RIS, after it ended: (the identifier as sent, None on
#: success or why it failed); for the audit trail (issue 15). Raising AuditUnavailable refuses
#: the answer: it is not shown (an event that cannot be audited does not happen)
QueryHook = Callable[[Dataset, str | None], None]

#: default spread of the refresh interval: ±10 %
DEFAULT_JITTER_FRACTION = 0.1

#: first wait after an unexpected error in the refresh loop; doubles per error in a row, up to
#: the refresh interval
DEFAULT_ERROR_BACKOFF_S = 1.0


class WorklistService:
    """The station's worklist: RIS, cache, refresh loop, duplicate guard.

    Parameters
    ----------
    config
        ``[worklist]``: the RIS's host, port, called AE title and `refresh_s`.
    ae_title
        Our AE title: the calling AE and the Scheduled Station AE Title queried.
    modality
        ``[modality] modality``: the Modality queried.
    cache_dir
        Folder of the offline cache (created 0700; the file is 0600).
    acquired
        Which (Study Instance UID, SPS ID) this agent already acquired: a callable or a
        collection of pairs. `mark_acquired` adds to it.
    max_results
        Cap on matches per query ("more than N" past it).
    days_before, days_after
        SPS Start Date range around today (0, 0: today only).
    fallback_charsets
        Character sets tried for responses without (0008,0005).
    timeout_s
        Timeout of each network step of a query.
    jitter_fraction
        The refresh interval is `refresh_s` * (1 ± this), drawn anew each time.
    error_backoff_s
        After an unexpected error the loop waits this long, doubled for each error in a row,
        at most `refresh_s` (the RIS's own failures are not errors of the loop).
    on_query
        Told of each C-FIND that reached the RIS (`QueryHook`); a RIS that could not be
        reached was sent no query and is not reported.
    rng, today, wall_clock
        Sources of randomness, date and time (tests pass fixed ones).

    Raises
    ------
    InvalidWorklistQuery
        If the AE title or modality cannot be queried, or a number is out of range.
    """

    def __init__(
        self,
        config: WorklistSection,
        *,
        ae_title: str,
        modality: str,
        cache_dir: Path,
        acquired: AcquiredLookup | Collection[tuple[str, str]] = (),
        max_results: int = DEFAULT_MAX_RESULTS,
        days_before: int = 0,
        days_after: int = 0,
        fallback_charsets: Sequence[str] = DEFAULT_FALLBACK,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        jitter_fraction: float = DEFAULT_JITTER_FRACTION,
        error_backoff_s: float = DEFAULT_ERROR_BACKOFF_S,
        tls: PeerTls | None = None,
        on_query: QueryHook | None = None,
        rng: random.Random | None = None,
        today: Callable[[], date] = date.today,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= jitter_fraction < 1:
            raise InvalidWorklistQuery(f"jitter_fraction: expected 0 <= x < 1, got "
                                       f"{jitter_fraction!r}")
        if min(days_before, days_after) < 0:
            raise InvalidWorklistQuery("days_before/days_after: expected >= 0")
        if not error_backoff_s > 0:
            raise InvalidWorklistQuery(f"error_backoff_s: expected > 0, got "
                                       f"{error_backoff_s!r}")
        if config.refresh_s <= 0:
            raise InvalidWorklistQuery(f"[worklist] refresh_s: expected > 0, got "
                                       f"{config.refresh_s!r}")
        self.config = config
        self.ae_title = ae_title
        self.modality = modality
        self.max_results = max_results
        self.days_before = days_before
        self.days_after = days_after
        self.fallback_charsets = tuple(fallback_charsets)
        self.timeout_s = timeout_s
        #: DICOM TLS to the RIS ([worklist] tls = true); never a plaintext fallback
        self.tls = tls
        self._on_query = on_query
        self.jitter_fraction = jitter_fraction
        self.error_backoff_s = error_backoff_s
        self.cache = WorklistCache(cache_dir)
        self._acquired_lookup: AcquiredLookup | None
        self._acquired: set[tuple[str, str]] = set()
        if callable(acquired):
            self._acquired_lookup = acquired
        else:
            self._acquired_lookup = None
            self._acquired.update(acquired)
        self._rng = rng or random.Random()
        self._today = today
        self._wall_clock = wall_clock
        self._build_query(self._today())          # refuse a bad AE title / modality now

        self._state_lock = threading.Lock()       # guards the fields below
        self._refresh_lock = threading.Lock()     # one query at a time
        self._items: tuple[WorklistItem, ...] = ()
        self._source = "cache"
        self._fetched_at: float | None = None
        self._truncated = False
        self._limit = max_results
        self._error: str | None = "the RIS has not been queried yet"
        self._problems: tuple[str, ...] = ()
        self._asked = ""                           # what the last successful query asked
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0                         # completed refresh attempts
        self._loop_error = ""                      # last unexpected error of the loop
        self._loop_error_at: float | None = None
        self._loop_errors_in_a_row = 0
        self._logged_problems: set[str] = set()
        self._load_cache()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the refresh thread (daemon): a query now, then one per interval."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="worklist-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the refresh thread; waits up to `timeout_s` for a query in progress."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                logger.warning("worklist: refresh thread still busy after %.1f s (a query "
                               "waiting for the RIS); it ends with that query", timeout_s)
        self._thread = None

    def next_interval_s(self) -> float:
        """The wait before the next refresh: `refresh_s` * (1 ± `jitter_fraction`)."""
        spread = self._rng.uniform(-self.jitter_fraction, self.jitter_fraction)
        return float(self.config.refresh_s) * (1.0 + spread)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh_now()
            except Exception as err:  # noqa: BLE001 - the loop must outlive any one bug
                wait_s = self._record_loop_error(err)
            else:
                with self._state_lock:
                    self._loop_errors_in_a_row = 0
                wait_s = self.next_interval_s()
            self._stop.wait(wait_s)

    def _record_loop_error(self, err: Exception) -> float:
        """Remember and log an unexpected error of one iteration; the wait before the next.

        Only the type and where it was raised are kept: the message of an arbitrary exception
        (a KeyError, a decoding error) may quote a patient's name or ID. Our own errors are
        written without patient data, so theirs is kept too.
        """
        where = ""
        frames = traceback.extract_tb(err.__traceback__)
        if frames:
            where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}"
        text = f"{type(err).__name__}{where}"
        if isinstance(err, AgentError):
            text += f": {err}"
        with self._state_lock:
            self._loop_errors_in_a_row += 1
            in_a_row = self._loop_errors_in_a_row
            self._loop_error = text
            self._loop_error_at = self._wall_clock()
        wait_s = min(float(self.config.refresh_s), self.error_backoff_s * 2.0 ** (in_a_row - 1))
        logger.error("worklist: refresh failed unexpectedly (%s); the worklist keeps its last "
                     "list, next attempt in %.0f s", text, wait_s)
        logger.debug("worklist: the refresh error in full", exc_info=err)
        return wait_s

    def thread_health(self) -> dict[str, Any]:
        """The refresh thread for `status`: ``alive`` (False before `start` and after `stop`),
        ``error`` (the last unexpected error of the loop, "" if none; type and place, no
        patient data), ``error_at`` (its wall-clock time) and ``errors_in_a_row``."""
        thread = self._thread
        with self._state_lock:
            return {"alive": thread is not None and thread.is_alive(),
                    "error": self._loop_error, "error_at": self._loop_error_at,
                    "errors_in_a_row": self._loop_errors_in_a_row}

    # --- queries -----------------------------------------------------------------------------

    def _build_query(self, today: date) -> BroadQuery:
        query = BroadQuery(self.ae_title, self.modality,
                           today - timedelta(days=self.days_before),
                           today + timedelta(days=self.days_after),
                           filter_station_ae=self.config.filter_station_ae,
                           filter_modality=self.config.filter_modality)
        build_identifier(query)
        return query

    def refresh_now(self) -> WorklistSnapshot:
        """Query the RIS now (broad query); on success replace the list and the cache, on
        failure keep the last good list and say why. Never raises for the RIS's faults."""
        with self._refresh_lock:
            today = self._today()
            query = self._build_query(today)
            try:
                result = self._find(query)
            except WorklistQueryError as err:
                self._record_failure(str(err))
            except AuditUnavailable as err:
                # the query could not be audited: its answer is not used
                self._record_failure(f"worklist answer not used: {err}")
            else:
                self._record_success(result, query.describe(today))
            self.refreshes += 1
        return self.snapshot()

    def _record_success(self, result: FindResult, asked: str) -> None:
        fetched_at = self._wall_clock()
        problems = list(result.problems)
        try:
            self.cache.save(CachedWorklist(result.items, fetched_at, self.ae_title,
                                           self.modality, result.truncated, result.limit))
        except WorklistCacheError as err:
            logger.warning("%s", err)
            problems.append(f"{err}; the offline cache is out of date")
        with self._state_lock:
            self._items = result.items
            self._source = "ris"
            self._fetched_at = fetched_at
            self._truncated = result.truncated
            self._limit = result.limit
            self._error = None
            self._problems = tuple(problems)
            self._asked = asked
        # a bad entry stays bad from one refresh to the next: say so once, not every minute
        for problem in result.problems:
            if problem not in self._logged_problems:
                logger.warning("%s", problem)
        self._logged_problems = set(result.problems)

    def _record_failure(self, reason: str) -> None:
        with self._state_lock:
            self._source = "cache"
            self._error = reason
            age = None if self._fetched_at is None else self._wall_clock() - self._fetched_at
            count = len(self._items)
        shown = "nothing cached" if age is None else f"{count} item(s) from {age:.0f} s ago"
        logger.warning("%s; showing the cache (%s)", reason, shown)

    def _load_cache(self) -> None:
        try:
            cached = self.cache.load()
        except WorklistCacheError as err:
            logger.warning("%s; starting without a cached worklist", err)
            self._problems = (str(err),)
            return
        if cached is None:
            return
        if (cached.station_ae_title, cached.modality) != (self.ae_title, self.modality):
            logger.info("worklist cache is for station %s / %s, not %s / %s: not used",
                        cached.station_ae_title, cached.modality, self.ae_title, self.modality)
            return
        self._items = cached.items
        self._fetched_at = cached.fetched_at
        self._truncated = cached.truncated
        self._limit = cached.limit or self.max_results

    def query_patient(self, query: PatientQuery) -> FindResult:
        """A patient-based query (any station), on demand; not cached. Items are marked
        like the snapshot's.

        Raises
        ------
        InvalidWorklistQuery
            If no key is given or a value cannot be sent.
        RISUnreachable, WorklistQueryError
            If the RIS cannot answer (no cache for these: ask again or acquire unscheduled).
        """
        result = self._find(query)
        marked, problems = self._mark(result.items)
        return dataclasses.replace(result, items=marked, problems=result.problems + problems)

    def _find(self, query: Query) -> FindResult:
        """One C-FIND, reported to `on_query` (success or failure) once it has ended.

        Raises
        ------
        WorklistQueryError
            From find_worklist.
        AuditUnavailable
            From `on_query`: the answer must not be used.
        """
        try:
            result = find_worklist(self.config, query, ae_title=self.ae_title,
                                   max_results=self.max_results,
                                   fallback_charsets=self.fallback_charsets,
                                   timeout_s=self.timeout_s, tls=self.tls)
        except RISUnreachable:
            raise                       # no association: no query left this station
        except WorklistQueryError as err:
            self._report_query(query, str(err))
            raise
        self._report_query(query, None)
        return result

    def _report_query(self, query: Query, error: str | None) -> None:
        if self._on_query is not None:
            self._on_query(build_identifier(query), error)

    # --- what callers read -------------------------------------------------------------------

    def snapshot(self) -> WorklistSnapshot:
        """The current list: from the RIS, or from the cache with its age and the reason."""
        with self._state_lock:
            items = self._items
            fetched_at = self._fetched_at
            source, error = self._source, self._error
            truncated, limit, problems = self._truncated, self._limit, self._problems
            asked = self._asked
        marked, marking_problems = self._mark(items)
        age = None if fetched_at is None else max(0.0, self._wall_clock() - fetched_at)
        return WorklistSnapshot(source=source, age_s=age, items=marked, truncated=truncated,
                                limit=limit, error=error, problems=problems + marking_problems,
                                fetched_at=fetched_at, asked=asked)

    def mark_acquired(self, study_instance_uid: str, sps_id: str) -> None:
        """Remember that this step was acquired here (the duplicate guard)."""
        with self._state_lock:
            self._acquired.add((study_instance_uid, sps_id))

    def _mark(self, items: tuple[WorklistItem, ...]
              ) -> tuple[tuple[WorklistItem, ...], tuple[str, ...]]:
        with self._state_lock:
            known = set(self._acquired)
        lookup = self._acquired_lookup
        marked = []
        for item in items:
            acquired = item.key in known
            if not acquired and lookup is not None:
                try:
                    acquired = bool(lookup(*item.key))
                except AgentError as err:
                    return items, (f"cannot tell which procedures were acquired here: {err}",)
            marked.append(dataclasses.replace(item, acquired_here=True) if acquired else item)
        return tuple(marked), ()

    def find(self, accession: str | None = None, sps_id: str | None = None) -> WorklistItem:
        """The one worklist item with this accession number and/or SPS ID.

        Looks in the current list; if nothing matches, refreshes from the RIS once and looks
        again (the order may be new). The item is marked (`is_duplicate`, `duplicate_reason`)
        when acquiring it would duplicate a procedure; refusing or confirming is the caller's
        decision.

        Raises
        ------
        InvalidWorklistQuery
            If neither is given.
        WorklistItemNotFound
            If no item matches (the message says where the list came from).
        WorklistItemAmbiguous
            If several match (the message lists the SPS IDs / accession numbers to choose by).
        """
        if not accession and not sps_id:
            raise InvalidWorklistQuery("give an accession number or an SPS ID")
        snapshot = self.snapshot()
        matches = _matching(snapshot.items, accession, sps_id)
        if not matches:
            snapshot = self.refresh_now()
            matches = _matching(snapshot.items, accession, sps_id)
        wanted = " and ".join(part for part in (
            f"accession number {accession!r}" if accession else "",
            f"SPS ID {sps_id!r}" if sps_id else "") if part)
        if not matches:
            hints = [snapshot.summary]
            if snapshot.truncated:
                hints.append(f"only the first {snapshot.limit} matches are listed")
            if snapshot.problems:
                hints.append(f"{len(snapshot.problems)} response(s) were left out as unusable")
            raise WorklistItemNotFound(f"no worklist item with {wanted} ({'; '.join(hints)})")
        if len(matches) > 1:
            choices = ", ".join(f"SPS ID {item.sps_id!r} (accession {item.accession_number!r})"
                                for item in matches)
            hint = "; give --sps-id as well" if not sps_id else \
                "; give --accession as well" if not accession else ""
            raise WorklistItemAmbiguous(
                f"{len(matches)} worklist items have {wanted}: {choices}{hint}")
        return matches[0]


def _matching(items: tuple[WorklistItem, ...], accession: str | None,
              sps_id: str | None) -> list[WorklistItem]:
    return [item for item in items
            if (not accession or item.accession_number == accession)
            and (not sps_id or item.sps_id == sps_id)]
