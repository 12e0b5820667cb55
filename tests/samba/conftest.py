"""The session's Samba AD DC (tests marked ``samba``; run them with scripts/test-samba).

Without Samba installed (or without root) the tests are skipped, unless
``AUTHGUARD_SAMBA_REQUIRED=1`` (set by scripts/test-samba), which turns that into a failure.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.samba.samba_dc import SambaDC, SambaError, available, ports_in_use

_TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory: pytest.TempPathFactory):
    """A provisioned, running Samba AD DC holding the test Exchange organization."""
    reason = available()
    if reason is None and ports_in_use():
        reason = f"127.0.0.1 ports {ports_in_use()} are in use (a system slapd or samba?)"
    if reason:
        if os.environ.get("AUTHGUARD_SAMBA_REQUIRED"):
            pytest.fail(f"the Samba AD DC cannot run here: {reason}")
        pytest.skip(f"Samba AD DC not available: {reason}")
    dc = SambaDC(tmp_path_factory.mktemp("samba"))
    started = time.monotonic()
    try:
        dc.start()
    except SambaError as exc:
        pytest.fail(f"the Samba AD DC did not start: {exc}")
    _TIMINGS.update(dc.timings)
    _TIMINGS["set-up total"] = round(time.monotonic() - started, 2)
    try:
        yield dc
    finally:
        dc.stop()


def pytest_terminal_summary(terminalreporter) -> None:
    if _TIMINGS:
        steps = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in _TIMINGS.items())
        terminalreporter.write_line(f"Samba AD DC: {steps}")
