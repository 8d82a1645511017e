"""Progress lines (rate, ETA) and the per-step cost the nightly records."""
import numpy as np

from recsys.progress import Meter, Progress


def test_meter_reports_the_block_s_own_time_cpu_and_peak_memory():
    with Meter() as big:
        block = np.ones(40_000_000 // 8 * 8, dtype=np.uint8)   # 40 MB touched
        block += 1
        del block
    with Meter() as small:
        sum(range(1000))
    assert big.use.seconds > 0 and big.use.cpu_seconds >= 0
    assert big.use.peak_rss_mb > 40
    if small.use.peak_is_own:      # Linux: the peak restarts per block, so the second one is lower
        assert small.use.peak_rss_mb < big.use.peak_rss_mb - 30
    assert set(small.use.to_dict()) == {"seconds", "cpu_seconds", "peak_rss_mb", "peak_is_own"}


def test_progress_prints_rate_and_eta_at_most_every_interval_and_always_at_the_end():
    lines = []
    p = Progress("evaluate", total=1000, unit="users", emit=lines.append, every=3600)
    p.advance(100)
    assert lines == []                           # not yet due
    p.every = 0
    p.advance(100)
    assert len(lines) == 1 and "200/1,000 users (20%)" in lines[0] and "users/s" in lines[0] and "ETA" in lines[0]
    p.advance(800)
    p.done()
    assert "1,000/1,000 users (100%)" in lines[-1] and "ETA" not in lines[-1] and " in " in lines[-1]
