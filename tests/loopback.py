"""``serve_in_thread``: run a stdlib ``socketserver`` server (bound to 127.0.0.1) on a thread.

>>> server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # doctest: +SKIP
>>> stop = serve_in_thread(server, "fake")                   # doctest: +SKIP
>>> stop()  # shut down, close, join                        # doctest: +SKIP
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable


def serve_in_thread(server: socketserver.BaseServer, name: str) -> Callable[[], None]:
    """Serve ``server`` on a daemon thread named ``name``; return the function that stops it."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
    )
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
