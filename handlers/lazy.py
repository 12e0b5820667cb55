"""``logged``: a lazy listener that logs its own failure with the traceback.

Bolt's lazy runner catches a lazy listener's exception and logs one line without the traceback;
operators need the traceback (the log redactor keeps secrets out of it).

>>> app.action("recheck")(ack=ack_now, lazy=[logged(recheck)])  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
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
