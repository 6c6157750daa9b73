"""A lease asks for about a fixed amount of the worker's own work: few images of a slow model,
many of a fast one, within 1 and the most it may hold."""

from __future__ import annotations

from aijobs_worker.sizing import FIRST_LEASE, LeaseSizer


def _warmed(per_image: float, most: int = 64) -> LeaseSizer:
    sizer = LeaseSizer(most=most, work_seconds=0.6)
    sizer.observe(20.0, FIRST_LEASE)  # the first batch loads the model: not the model's pace
    assert sizer.size() == min(most, FIRST_LEASE)
    sizer.observe(per_image * 8, 8)
    return sizer


def test_a_lease_holds_about_the_same_work_whatever_an_image_costs() -> None:
    assert LeaseSizer(most=64, work_seconds=0.6).size() == FIRST_LEASE  # nothing measured yet
    assert _warmed(0.080).size() == 7  # upscale-x2 on a CPU: 80 ms an image
    assert _warmed(0.004).size() == 64  # grayscale: 4 ms an image, as many as it may hold
    assert _warmed(3.0).size() == 1  # a large model on a CPU: seconds an image
    assert _warmed(0.004, most=2).size() == 2  # never past the most


def test_the_size_follows_the_work_as_it_changes() -> None:
    sizer = _warmed(0.004)
    for _ in range(12):  # the queue turns to a slow pipeline
        sizer.observe(0.8, 8)
    assert sizer.size() == 6
