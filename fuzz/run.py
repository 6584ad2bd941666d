"""The long-running property harness: the properties of tests/proto/test_properties.py
and the session state machine of tests/proto/test_session_properties.py, with far more
examples.

    python fuzz/run.py                      # every property, 5000 examples each
    python fuzz/run.py --examples 100000    # more
    python fuzz/run.py --minutes 30         # rounds of every property until time is up
    python fuzz/run.py --only hostile chunking --minutes 5

Exits 1 (after printing hypothesis' falsifying example) when a property fails.
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.proto import test_session_properties
from tests.proto.strategies import PROPERTIES

#: State machines, run like the properties (an example is one run of up to STEPS steps).
MACHINES = {"session": test_session_properties.SessionMachine}
STEPS = 100

#: A property round that runs longer than this is taken to hang (its stacks are dumped).
HANG_SECONDS = 15 * 60


def run_property(name: str, examples: int) -> tuple[bool, int]:
    """Run one property (or state machine) for ``examples`` examples; (passed, examples
    actually run)."""
    calls = 0
    options = settings(
        max_examples=examples,
        deadline=None,
        database=None,  # a fresh random search every round; failures print a reproducer
        print_blob=True,
        suppress_health_check=list(HealthCheck),
        stateful_step_count=STEPS,
    )
    test: Any
    if name in MACHINES:

        class Counted(MACHINES[name]):  # type: ignore[misc,valid-type]
            def __init__(self) -> None:
                nonlocal calls
                calls += 1
                super().__init__()

        def test() -> None:
            run_state_machine_as_test(Counted, settings=options)

    else:
        check, strategies = PROPERTIES[name]

        def counted(**kwargs: Any) -> None:
            nonlocal calls
            calls += 1
            check(**kwargs)

        test = options(given(**strategies)(counted))
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        test()
    except Exception:
        import traceback

        traceback.print_exc()
        return False, calls
    finally:
        faulthandler.cancel_dump_traceback_later()
    return True, calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=None,
                        help="examples per property, per round with --minutes (default 5000; 1000 a round)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="keep running rounds of every property until this much time has passed")
    names = sorted(PROPERTIES) + sorted(MACHINES)
    parser.add_argument("--only", nargs="+", choices=names, default=names,
                        help="run only these properties")
    args = parser.parse_args(argv)
    examples = args.examples or (1000 if args.minutes else 5000)
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    totals = dict.fromkeys(args.only, 0)
    start = time.monotonic()
    rounds = 0
    while True:
        rounds += 1
        for name in args.only:
            t0 = time.monotonic()
            ok, calls = run_property(name, examples)
            totals[name] += calls
            print(f"round {rounds}: {name}: {calls} examples in {time.monotonic() - t0:.1f}s: "
                  f"{'ok' if ok else 'FAILED'}", flush=True)
            if not ok:
                print(f"FAILED: property {name!r} (see the falsifying example above)", flush=True)
                return 1
            if deadline is not None and time.monotonic() >= deadline:
                break
        if deadline is None or time.monotonic() >= deadline:
            break
    elapsed = (time.monotonic() - start) / 60
    summary = ", ".join(f"{name} {n}" for name, n in totals.items())
    print(f"all properties held: {sum(totals.values())} examples in {elapsed:.1f} min "
          f"({rounds} round{'s' * (rounds > 1)}): {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
