from __future__ import annotations

import io

from pawlab.progress import LineProgress, progress_bar


def test_a_log_gets_plain_lines_with_the_count_the_rate_and_the_time_left() -> None:
    log = io.StringIO()  # not a terminal
    bar = progress_bar(range(4), total=4, desc="decoding", stream=log)
    assert isinstance(bar, LineProgress)
    bar.interval = 0.0  # a line for every step (30 s in use)
    assert list(bar) == [0, 1, 2, 3]
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("decoding: 1/4 img (25%), ") and "img/s" in lines[0] and "left" in lines[0]
    assert lines[-2].startswith("decoding: 4/4 img (100%)") and lines[-1].startswith(
        "decoding: done, 4 img in "
    )


def test_a_short_stage_in_a_log_stays_silent_and_a_disabled_one_too() -> None:
    log = io.StringIO()
    bar = progress_bar(total=10, desc="features", stream=log)
    bar.update(10)
    bar.close()
    assert log.getvalue() == ""  # under 30 s: nothing to report
    off = progress_bar(total=10, desc="x", enabled=False, stream=log)
    off.update(10)
    off.close()
    assert log.getvalue() == ""
