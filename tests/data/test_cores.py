"""The cores pawlab may keep busy: its affinity, at most its container's CPU limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from pawlab.data import workers


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("200000 100000\n", None, 2),
        ("150000 100000\n", None, 2),  # 1.5 CPUs: two cores, each partly busy
        ("max 100000\n", None, None),
        (None, ("50000", "100000"), 1),
        (None, ("-1", "100000"), None),
        (None, None, None),  # no cgroup files: not in a container
        ("garbage\n", None, None),
    ],
)
def test_the_cgroup_cpu_limit_is_read_from_v2_or_v1(
    tmp_path: Path, v2: str | None, v1: tuple[str, str] | None, expected: int | None
) -> None:
    v2_file, quota, period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    if v2 is not None:
        v2_file.write_text(v2)
    if v1 is not None:
        quota.write_text(v1[0])
        period.write_text(v1[1])
    assert workers.cgroup_cpu_limit(v2_file, (quota, period)) == expected


def test_usable_cores_are_at_most_the_container_s_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: None)
    unlimited = workers.usable_cores()
    assert unlimited >= 1
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: 1)
    assert workers.usable_cores() == 1
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: unlimited + 5)
    assert workers.usable_cores() == unlimited
