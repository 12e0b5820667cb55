"""The audit runner: read targets from the directory, judge them, store the run as it goes.

>>> run = run_audit(settings, store, open_directory=sample, trigger="cli")  # doctest: +SKIP
>>> run["status"], run["warning"]  # doctest: +SKIP
('succeeded', 7)

Every run is recorded first as ``running``, then ``succeeded`` or ``failed``: a directory that
goes down halfway gives a failed run with the reason, never an "all clear". Targets are stored in
batches while the search streams, so memory does not grow with the forest.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.config import ConfigError, Settings
from bot.directory import Directory, DirectoryError, Target
from bot.rules import judge
from bot.waivers import Override, waiver_override
from storage import StorageError, Store
from storage import audits as audit_store

BATCH = 500
OpenDirectory = Callable[[], Directory]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Scope:
    """What a run covers: everything, one server (by name) or one target (by DN)."""

    kind: str = "full"
    value: str | None = None

    @property
    def label(self) -> str:
        return "full" if self.kind == "full" else f"{self.kind}:{self.value}"


FULL = Scope()


class AuditFailed(Exception):
    """The run was recorded as failed; ``run`` is its row and the message says why.
    ``not_found``: a one-server check found no Exchange server of that name."""

    def __init__(self, message: str, run: dict[str, Any], not_found: bool = False) -> None:
        super().__init__(message)
        self.run = run
        self.not_found = not_found


class NoSuchServer(Exception):
    """No Exchange server has that name in the directory."""


def exempt_reason(settings: Settings, target: Target, is_sbs: Callable[[str], bool]) -> str | None:
    """``"configured"``, ``"sbs"`` or ``None`` for the server a target sits on (``is_sbs`` tells
    whether a host name runs Small Business Server: see :func:`sbs_test`)."""
    if settings.is_exempt(target.server):
        return "configured"
    if target.fqdn and is_sbs(target.fqdn):
        return "sbs"
    return None


def sbs_test(directory: Directory, scope: Scope) -> Callable[[str], bool]:
    """Whether a server's host (lower-case FQDN) runs Small Business Server.

    A full audit reads every SBS computer of the domain in one search; a narrower run (a
    recheck, ``status --live``) asks only for the computers of the servers it meets, once each,
    instead of searching the whole domain.
    """
    if scope.kind == "full":
        return directory.sbs_hostnames().__contains__
    answers: dict[str, bool] = {}

    def is_sbs(fqdn: str) -> bool:
        if fqdn not in answers:
            system = directory.operating_system(fqdn) or ""
            answers[fqdn] = "small business server" in system.lower()
        return answers[fqdn]

    return is_sbs


def target_row(target: Target, exempt: str | None) -> dict[str, Any]:
    """The stored (and JSON) form of one judged target."""
    result = judge(target.kind, target.raw_flags, exempt)
    return {
        "target_key": target.key,
        "server": target.server,
        "kind": target.kind,
        "name": target.name,
        "dn": target.dn,
        "flags": result.flags,
        "raw_flags": target.raw_flags,
        "basic_auth": result.basic_auth,
        "tls_required": result.tls_required,
        "verdict": result.verdict,
        "reason": result.reason,
        "severity": result.severity,
        "version": target.version,
        "fqdn": target.fqdn,
    }


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while the targets stream through.

    An audit allocates a handful of objects per LDAP value and reference counting frees them at
    once; the collector's passes over them free next to nothing and cost about a tenth of a large
    audit. It resumes when the run ends (if another thread paused it first, that one resumes it).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _targets(directory: Directory, scope: Scope) -> Iterator[Target]:
    if scope.kind == "full":
        yield from directory.iter_targets()
    elif scope.kind == "server":
        servers = directory.find_servers(scope.value or "")
        if not servers:
            raise NoSuchServer(scope.value)
        for server in servers:
            yield from directory.iter_targets(base=server.dn)
    elif scope.kind == "target":
        target = directory.read_target(scope.value or "")
        if target is not None:
            yield target
    else:  # pragma: no cover - programming error
        raise ValueError(scope.kind)


def run_audit(
    settings: Settings,
    store: Store,
    open_directory: OpenDirectory,
    trigger: str,
    requested_by: str | None = None,
    scope: Scope = FULL,
    progress: Progress | None = None,
    override: Override | None = None,
) -> dict[str, Any]:
    """Run one audit and return its stored run row; raise :class:`AuditFailed` when it fails.

    ``open_directory`` connects (it is called after the run is recorded, so a refused bind is a
    failed run too). ``override`` may replace a verdict before the row is stored; by default
    the waivers in force do (see :mod:`bot.waivers`). Every run is written to the audit log.
    """
    run_id = audit_store.start_run(store, trigger, requested_by, scope.label)
    counts: Counter[str] = Counter()

    def finish(status: str, error: str | None = None) -> dict[str, Any]:
        return audit_store.finish_run(store, run_id, status, error=error, counts=counts)

    if override is None:
        override = waiver_override(store)
    try:
        with _collector_paused(), open_directory() as directory:
            is_sbs = sbs_test(directory, scope)
            batch: list[dict[str, Any]] = []
            for target in _targets(directory, scope):
                row = target_row(target, exempt_reason(settings, target, is_sbs))
                replaced = override(row)
                if replaced is not None:
                    row["verdict"], row["reason"] = replaced
                counts[row["verdict"]] += 1
                batch.append(row)
                if len(batch) >= BATCH:
                    audit_store.add_targets(store, run_id, batch)
                    batch = []
                if progress is not None:
                    progress(counts.total())
            if batch:
                audit_store.add_targets(store, run_id, batch)
    except (DirectoryError, ConfigError, StorageError, NoSuchServer, OSError) as exc:
        not_found = isinstance(exc, NoSuchServer)
        message = f"no Exchange server named {exc}" if not_found else str(exc)
        raise AuditFailed(message, finish("failed", message), not_found) from exc
    except BaseException as exc:
        # anything unexpected: still never leave the run looking like it is running or clean
        finish("failed", f"internal error: {exc.__class__.__name__}")
        raise
    run = finish("succeeded")
    if scope.kind == "full":
        cutoff = datetime.now(UTC) - timedelta(days=settings.keep_days)
        audit_store.prune_targets(store, cutoff.isoformat())
    return run
