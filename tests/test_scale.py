"""benchmarks/scale.py's dry mode (issue 19): the simulation harness runs end to end on small sizes, so it cannot
rot, and the properties that do not depend on timing hold: the bounded reader's open files stay flat over a pass
over every shard (the unbounded one's grow with the shards), and every table is printed."""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_script

pytestmark = pytest.mark.slow


def test_scale_benchmark_dry_mode() -> None:
    proc = run_script("benchmarks/scale.py", "--dry", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for title in ("## Data", "## Ranks' views", "## Loader memory", "## Checkpoint"):
        assert title in out, out
    assert re.search(r"\| 1,000 \| [\d.]+ \|", out)  # a row per simulated dataset size
    bounded = re.search(r"\| bounded \(OPEN_SHARDS=8\) \| [^|]+ \| ([\d /]+) \|", out)
    unbounded = re.search(r"\| unbounded \(before\) \| [^|]+ \| ([\d /]+) \|", out)
    assert bounded and unbounded, out
    assert [int(x) for x in bounded.group(1).split("/")] == [0, 8, 8, 8, 8]
    assert [int(x) for x in unbounded.group(1).split("/")] == [0, 250, 500, 750, 1000]
    ranks = re.findall(r"^\| 64 \| (\d) \| (\d+) \|", out, flags=re.M)
    assert [r for r, _ in ranks] == ["0", "1"] and all(int(mib) > 0 for _, mib in ranks)
