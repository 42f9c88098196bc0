"""The ledger books fractions of GPU-hours for shared GPUs (docs/gpu-sharing.md): an allocation's
GPU-seconds are its seconds times its share, in usage reports, quotas and fair share alike."""
import math

from mlpd.scheduling.accounting import Allocation, decayed_usage, gpu_seconds, overlap_seconds, summarize

T0 = 1_800_000_000.0
HOUR = 3600.0


def alloc(owner, share, start=T0, end=T0 + HOUR, gpu="GPU-0", kind="workspace"):
    return Allocation(owner, kind, f"{owner}-{start}", gpu, 0, "declared", start, end, share)


def test_an_hour_on_half_a_gpu_books_half_a_gpu_hour():
    a = alloc("ann", 0.5)
    assert overlap_seconds(a, T0, T0 + 2 * HOUR) == HOUR
    assert gpu_seconds(a, T0, T0 + 2 * HOUR) == HOUR / 2
    assert gpu_seconds(alloc("ann", 1.0), T0, T0 + 2 * HOUR) == HOUR  # whole GPUs as before


def test_usage_reports_sum_the_shares_of_one_gpu_to_one_gpu_hour():
    rows = summarize([alloc("ann", 0.5), alloc("bob", 0.5), alloc("cat", 1.0, gpu="GPU-1")], T0, T0 + HOUR, "user")
    assert {r.key: r.gpu_hours for r in rows} == {"ann": 0.5, "bob": 0.5, "cat": 1.0}
    by_day = summarize([alloc("ann", 0.25)], T0, T0 + HOUR, "day")
    assert [r.gpu_hours for r in by_day] == [0.25]


def test_fair_share_usage_counts_the_share():
    half, whole = alloc("ann", 0.5), alloc("bob", 1.0)
    usage = decayed_usage([half, whole], T0 + HOUR, half_life=7 * 24 * HOUR)
    assert math.isclose(usage["ann"], usage["bob"] / 2)
