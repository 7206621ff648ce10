"""``make test``: the suite in two lanes at once, so that the waiting of one hides under the work of the other.

The integration lane (real Prefect servers, SeaweedFS and workers: mostly waiting on heartbeats, polls and
process starts) and the unit lane (CPU-bound: training, decoding, fuzzing) run as two pytest processes, each
with its own temporary folder. The integration lane streams to the terminal; the unit lane's output follows
when both are done. Exit status: 0 only when both lanes pass. Extra arguments go to both pytest runs.

pytest-xdist's ``loadgroup`` would do this inside one pytest, but it cannot group on pytest 9 (it renames
``item._nodeid``, which pytest 9 no longer reads), and a second worker would start the session stacks twice.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Integration tests that start servers of their own (own_servers) run in the unit lane: the session stack's tests
# are the long lane, and the unit lane ends minutes earlier (a fresh clone: 908 s against 556 s).
LANES = {"integration": "integration and not own_servers", "unit": "not integration or own_servers"}


def lane_command(marker: str, basetemp: Path, extra: list[str]) -> list[str]:
    # --durations: the slowest tests of each lane are printed with every run, so the suite's budget is visible
    return [sys.executable, "-m", "pytest", "-q", "-m", marker, f"--basetemp={basetemp}", "-p", "no:cacheprovider",
            "--durations=15", *extra]


def main(extra: list[str]) -> int:
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kinship-tests-") as temp:
        temp_dir = Path(temp)
        unit_log = temp_dir / "unit.log"
        with unit_log.open("w") as log:
            unit = subprocess.Popen(lane_command(LANES["unit"], temp_dir / "unit", extra), cwd=REPO,
                                    stdout=log, stderr=subprocess.STDOUT)
            print("integration lane (the unit lane runs beside it; its output follows):", flush=True)
            integration_rc = subprocess.call(lane_command(LANES["integration"], temp_dir / "integration", extra), cwd=REPO)
            integration_s = time.monotonic() - began
            unit_rc = unit.wait()
        unit_s = time.monotonic() - began
        print("\nunit lane:", flush=True)
        print(unit_log.read_text(errors="replace"), end="", flush=True)
    print(f"\nlanes: integration {integration_s:.0f} s (exit {integration_rc}), unit {unit_s:.0f} s (exit {unit_rc}); "
          f"suite wall {time.monotonic() - began:.0f} s")
    # pytest exits 5 when a lane selects no test (e.g. a -k that matches only the other lane): not a failure
    codes = [code for code in (integration_rc, unit_rc) if code not in (0, 5)]
    return codes[0] if codes else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
