"""How many tasks a lease asks for: about a fixed amount of this worker's own work.

Each lease costs the same whatever it holds: a lease, a read of its inputs, an upload of its
results and a completion, each a request to a service and a transaction there. A lease of a
slow model's images (upscale-x2 on a CPU, ~80 ms an image) pays for them in a fraction of its
work; a fast one's (grayscale, or any model on a GPU: a few ms an image) pays for them over and
over, so a fixed lease size is wrong for one of the two. The worker measures the seconds an
image of its loop's own work takes (inference, encoding and spooling, per batch) and leases as
many as it runs in about ``work_seconds``, between 1 and ``most``: ~7 for upscale-x2 on this
project's CPU, the most for grayscale. It does no I/O and reads no clock: the loop feeds it
timings and asks it for sizes. The first batch is not counted: it pays for loading the model.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_LEASE = 8  # before anything was measured
_WEIGHT = 0.3  # of the latest batch in the running mean


@dataclass
class LeaseSizer:
    most: int
    work_seconds: float
    per_image: float | None = None  # seconds of the loop's work an image, a running mean
    batches: int = 0  # observed, the first one (the model loading) included

    def size(self) -> int:
        """Tasks to lease next."""
        if self.per_image is None:
            return min(self.most, FIRST_LEASE)
        return max(1, min(self.most, int(self.work_seconds / max(self.per_image, 1e-6))))

    def observe(self, seconds: float, images: int) -> None:
        """A batch of ``images`` took the loop ``seconds``."""
        self.batches += 1
        if images <= 0 or self.batches == 1:
            return
        each = seconds / images
        self.per_image = each if self.per_image is None else (1 - _WEIGHT) * self.per_image + _WEIGHT * each
