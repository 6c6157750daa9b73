"""A lease asks for about a fixed amount of the worker's own work: few images of a slow model,
many of a fast one, within 1 and the most it may hold."""

from __future__ import annotations

from aijobs_worker.sizing import FIRST_LEASE, LeaseSizer


def test_a_lease_holds_about_the_same_work_whatever_an_image_costs() -> None:
    slow, fast = LeaseSizer(most=64, work_seconds=0.6), LeaseSizer(most=64, work_seconds=0.6)
    assert slow.size() == fast.size() == FIRST_LEASE  # nothing measured yet
    slow.observe(0.64, 8)  # upscale-x2 on a CPU: 80 ms an image
    fast.observe(0.032, 8)  # grayscale: 4 ms an image
    assert (slow.size(), fast.size()) == (7, 64)
    crawl = LeaseSizer(most=64, work_seconds=0.6)
    crawl.observe(30.0, 8)  # a large model on a CPU: seconds an image
    assert crawl.size() == 1


def test_the_size_follows_the_work_as_it_changes() -> None:
    sizer = LeaseSizer(most=64, work_seconds=0.6)
    sizer.observe(0.032, 8)
    assert sizer.size() == 64
    for _ in range(12):  # the queue turns to a slow pipeline
        sizer.observe(0.8, 8)
    assert sizer.size() == 6
    assert LeaseSizer(most=2, work_seconds=0.6).size() == 2  # never past the most
