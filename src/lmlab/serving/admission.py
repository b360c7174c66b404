"""Admission control: a bounded queue that refuses cleanly instead of growing without limit.

The engine runs `slots` requests at once and queues the rest. Past `slots + max_queue` waiting and
running requests, a new one gets 429 with a Retry-After header: the time the queue ahead of it
should take to move, estimated from the mean time a request has held a slot (an exponentially
weighted moving average), as a client can plan on that better than on a timeout.
"""

from __future__ import annotations

import math

from lmlab.serving.errors import APIError, bad_request

SMOOTHING = 0.2  # weight of the newest request in the moving average of service time


class Admission:
    """Counts the engine requests in the server (queued or running) and refuses those past the bound.

    Used from the event loop's thread only, so admitting is one atomic check-and-add.
    """

    def __init__(self, slots: int, max_queue: int) -> None:
        self.slots = slots
        self.capacity = slots + max_queue
        self.outstanding = 0
        self.mean_seconds = 1.0

    def admit(self, count: int) -> None:
        """Take `count` engine requests (one HTTP request's prompts x n) in, or raise 400/429."""
        if count > self.capacity:
            raise bad_request(f"this request needs {count} generations (prompts x n), but the server holds at most "
                              f"{self.capacity} at once", "n")
        if self.outstanding + count > self.capacity:
            raise APIError(429, f"the server is busy: {self.outstanding} requests are queued or running, the limit "
                                f"is {self.capacity}; retry later", code="queue_full",
                           headers={"Retry-After": str(self.retry_after(count))})
        self.outstanding += count

    def release(self, seconds: float) -> None:
        """One engine request left the server after `seconds` in it."""
        self.outstanding -= 1
        self.mean_seconds += SMOOTHING * (seconds - self.mean_seconds)

    def retry_after(self, count: int) -> int:
        """Seconds until `count` slots should be free: the queue ahead drains `slots` at a time."""
        ahead = max(self.outstanding - self.capacity + count, 1)
        return max(1, math.ceil(self.mean_seconds * math.ceil(ahead / self.slots)))
