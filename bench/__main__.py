"""`python -m bench [SCENARIO...] [--quick] [--json] [--repeats N]`

Scenarios run in the order given (default: all, in the order below). Each gets its own
workspace: every process it started is stopped by PID and its temp folders removed when it
ends, also when it fails or the bench is interrupted. Tables go to stdout; with --json, stdout
is one JSON object and the tables go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import PROFILE, SCALE, TRACEMALLOC, Workspace, say

SCENARIOS = ("send", "scaling", "restart", "capture", "build", "e2e", "soak", "footprint")
ALIASES = {"end-to-end": "e2e", "endtoend": "e2e"}
#: run only when named: `fleet` starts a database, two Orthanc nodes and --agents daemons
NAMED_ONLY = ("fleet",)


def _interrupted(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller volumes and 1 repeat: the same shape in < 4 minutes")
    parser.add_argument("--tiny", action="store_true",
                        help="every scenario at a tiny size, to check the bench still works "
                        "(the test suite runs this); the figures mean nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default 3, "
                        "1 with --quick)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="sample every agent process and Python sender with py-spy "
                        "(raw collapsed stacks, --idle --threads) into DIR; slows them down")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="soak: the daemon and its sending processes trace allocations; "
                        "report what grew between the first and last idle checkpoint "
                        "(slows them down: its RSS figures are not the agent's)")
    parser.add_argument("--agents", type=int, metavar="N",
                        help="fleet: agent daemons to start (default 10; --quick: 2)")
    parser.add_argument("--soak-objects", type=int, metavar="N",
                        help="soak: objects in all (default 10,000; --quick: 2,000); issue 18 "
                        "judges the RSS slope over 50,000")
    args = parser.parse_args(argv)
    if args.soak_objects is not None:
        if args.soak_objects < 6:
            parser.error("--soak-objects: at least 6 (one per acquisition)")
        from bench import soak
        soak.OBJECTS["n"] = args.soak_objects
    if args.agents is not None:
        from bench import fleet
        fleet.AGENTS["n"] = args.agents
    TRACEMALLOC["on"] = args.tracemalloc
    if args.tiny:
        SCALE["tiny"] = True
        args.quick = True
    if args.profile is not None:
        PROFILE["dir"] = args.profile.resolve()
    chosen = [ALIASES.get(s, s) for s in args.scenarios] or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS + NAMED_ONLY]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    repeats = args.repeats or (1 if args.quick else 3)
    signal.signal(signal.SIGTERM, _interrupted)
    results: dict[str, Any] = {}
    texts: list[str] = []
    failed = False
    t_all = time.monotonic()
    for name in chosen:
        say(f"{name}: start")
        t0 = time.monotonic()
        try:
            module = importlib.import_module(f"bench.{name}")
            with Workspace() as ws:
                result, tables = module.run(ws, quick=args.quick, repeats=repeats)
        except Exception as err:  # noqa: BLE001 - one scenario's failure must not hide the rest
            failed = True
            say(f"{name}: FAILED: {err}")
            traceback.print_exc(file=sys.stderr)
            result, tables = {"error": f"{type(err).__name__}: {err}"}, [f"{name}: FAILED: {err}"]
        result["elapsed_s"] = round(time.monotonic() - t0, 1)
        say(f"{name}: done in {result['elapsed_s']} s")
        results[name] = result
        texts.extend(tables)
        out = sys.stderr if args.json else sys.stdout
        out.write("\n" + "\n\n".join(tables) + "\n\n")
        out.flush()
    say(f"all done in {time.monotonic() - t_all:.1f} s")
    if args.json:
        results["quick"] = args.quick
        results["repeats"] = repeats
        sys.stdout.write(json.dumps(results, indent=1, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
