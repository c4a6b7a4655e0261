"""No leaks: steady load with faults and disconnects, then idle (CI size: 20 s of load).

`python -m bench.soak --leak` runs the same scenario for 10 minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.scenarios import run_leak


@pytest.mark.slow
async def test_steady_load_grows_no_memory_and_leaves_no_task_socket_or_fd_behind(tmp_path: Path) -> None:
    report = await run_leak(load_s=20.0, warmup_s=8.0, rate=300.0, settle_within_s=60.0, workdir=tmp_path)
    print(report.summary())

    assert report.outcomes.get("anomaly", 0) == 0
    assert report.peak_tasks > report.baseline_tasks + 10 and report.peak.sockets > report.baseline.sockets + 10
    # RSS after warm-up grows under 10%, and its fitted trend over the run stays under 10% too.
    assert report.rss_growth < 0.10
    assert report.trend_over_run < 0.10
    # Within 60 s of the load stopping, tasks, sockets and fds are back to their idle baseline.
    assert report.settled_after_s is not None and report.settled_after_s <= 60.0
    assert report.after_tasks <= report.baseline_tasks
    assert report.after.sockets <= report.baseline.sockets
    assert report.after.fds <= report.baseline.fds
