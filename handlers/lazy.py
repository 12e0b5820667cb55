"""The lazy halves of listeners (the work after an ack): where they run and how they fail.

:class:`LazyPool` runs them once the acks of a burst are out; ``logged`` makes a lazy listener log
its own failure with the traceback (Bolt's lazy runner logs one line without it; the log redactor
keeps secrets out of it).

>>> App(..., process_before_response=True, listener_executor=LazyPool())       # doctest: +SKIP
>>> app.action("recheck")(ack=ack_now, lazy=[logged(recheck)])                  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


def logged(listener: Callable[..., None]) -> Callable[..., None]:
    """``listener``, logging any exception it raises (Bolt reads the wrapped function's
    arguments through ``__wrapped__``, so the same keyword arguments are injected)."""

    @functools.wraps(listener)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            listener(*args, **kwargs)
        except Exception:
            log.exception("the %s listener failed", listener.__name__)

    return run


class LazyPool(ThreadPoolExecutor):
    """The threads for Bolt's lazy listeners (the work after an ack), acks first.

    Each ack is answered in its request's thread (``process_before_response``, see
    :mod:`handlers.app`); the lazy halves run here. A lazy task starts once no request is being
    answered (at most ``max_wait`` seconds after it was submitted), so under a burst of clicks
    the acks do not compete for the interpreter with the work they asked for (re-reads,
    remediation jobs, redraws) and Slack's 3 s never runs out.
    """

    def __init__(self, workers: int = 5, max_wait: float = 0.5) -> None:
        super().__init__(max_workers=workers, thread_name_prefix="lazy")
        self.max_wait = max_wait
        self._answering = 0
        self._idle = threading.Condition()

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Around the answer to one request."""
        with self._idle:
            self._answering += 1
        try:
            yield
        finally:
            with self._idle:
                self._answering -= 1
                if not self._answering:
                    self._idle.notify_all()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        deadline = time.monotonic() + self.max_wait

        def after_the_acks() -> Any:
            with self._idle:
                self._idle.wait_for(
                    lambda: not self._answering, max(0.0, deadline - time.monotonic())
                )
            return fn(*args, **kwargs)

        return super().submit(after_the_acks)
