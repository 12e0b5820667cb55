"""The command core: one audit at a time, status with close matches, listeners, layering."""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

from bot.audit import Scope
from bot.config import Settings
from bot.directory import sample
from bot.service import Authguard, close_matches
from storage import open_store

ROOT = Path(__file__).resolve().parents[1]


def slow_sample(gate: threading.Event):
    """The sample forest, opened only when ``gate`` is set (an audit that takes a while)."""

    def open_directory():
        gate.wait(5)
        return sample()

    return open_directory


def test_a_second_audit_request_waits_for_the_running_one_and_gets_its_result(tmp_path):
    gate = threading.Event()
    core = Authguard(Settings(), open_store(str(tmp_path / "a.db")), slow_sample(gate))
    results = []
    first = threading.Thread(target=lambda: results.append(core.audit("chat", "U1")))
    first.start()
    deadline = time.time() + 5
    while core.audit_running() is None and time.time() < deadline:
        time.sleep(0.01)
    assert core.audit_running() is not None
    second = threading.Thread(target=lambda: results.append(core.audit("chat", "U2")))
    second.start()
    time.sleep(0.1)
    gate.set()
    first.join(5)
    second.join(5)
    assert sorted(r.joined for r in results) == [False, True]
    assert len({r.run["id"] for r in results}) == 1
    assert core.store.db["audit_runs"].count == 1


def test_two_cores_on_one_database_share_one_audit(tmp_path):
    """Two processes (two cores with their own connections): the database lease decides."""
    gate = threading.Event()
    path = str(tmp_path / "shared.db")
    one = Authguard(Settings(), open_store(path), slow_sample(gate), owner="host:1")
    two = Authguard(Settings(), open_store(path), slow_sample(gate), owner="host:2")
    results = []
    first = threading.Thread(target=lambda: results.append(one.audit("schedule")))
    first.start()
    deadline = time.time() + 5
    while one.audit_running() is None and time.time() < deadline:
        time.sleep(0.01)
    second = threading.Thread(target=lambda: results.append(two.audit("schedule")))
    second.start()
    time.sleep(0.3)
    gate.set()
    first.join(10)
    second.join(10)
    assert len({r.run["id"] for r in results}) == 1
    assert one.store.db["audit_runs"].count == 1


def test_listeners_hear_every_finished_run(tmp_path):
    core = Authguard(Settings(), open_store(str(tmp_path / "a.db")), sample)
    heard = []
    core.on_audit(lambda run, scope: heard.append((run["status"], scope.kind)))
    core.audit("cli")
    core.check(Scope("server", "EX01"), "chat")
    assert heard == [("succeeded", "full"), ("succeeded", "server")]


def test_a_failing_listener_does_not_break_the_audit(tmp_path):
    core = Authguard(Settings(), open_store(str(tmp_path / "a.db")), sample)
    core.on_audit(lambda run, scope: 1 / 0)
    assert core.audit("cli").run["status"] == "succeeded"


def test_status_of_an_unknown_server_offers_close_matches(tmp_path):
    core = Authguard(Settings(), open_store(str(tmp_path / "a.db")), sample)
    assert core.status("EX01").no_audit_yet
    core.audit("cli")
    found = core.status("ex16a")
    assert found.found and found.rows[0]["server"] == "EX16A"
    missing = core.status("EX16C")
    assert not missing.found and missing.matches[:2] == ["EX16A", "EX16B"]


def test_close_matches_are_most_alike_first():
    assert close_matches("ex1", ["EX01", "EX02", "SBS01", "EX16A"]) == ["EX01", "EX16A", "EX02"]
    assert close_matches("zzz", ["EX01"]) == []


def test_the_core_never_imports_slack():
    """bot/ and storage/ know nothing of Slack (serve loads handlers/ inside the function)."""
    for folder in ("bot", "storage"):
        for path in (ROOT / folder).glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.col_offset == 0:
                    names = [node.module or ""]
                for name in names:
                    assert not name.startswith(("slack", "handlers")), f"{path.name} imports {name}"


def test_a_run_left_running_by_a_dead_process_is_marked_failed(tmp_path):
    """A crash mid-audit leaves a 'running' row; once nobody holds the audit lease and the run
    is older than a lease, it is failed, so summaries never show it running forever."""
    from storage import audits as audit_store

    store = open_store(str(tmp_path / "a.db"))
    core = Authguard(Settings(), store, sample)
    dead = audit_store.start_run(store, "schedule")
    with store.transaction() as db:
        db.execute(
            "update audit_runs set started_at = '2026-01-01T00:00:00+00:00' where id = ?", [dead]
        )
    fresh = audit_store.start_run(store, "chat")  # just started: maybe another process's run
    assert core.fail_stale_runs() == 1
    assert audit_store.get_run(store, dead)["status"] == "failed"
    assert "interrupted" in audit_store.get_run(store, dead)["error"]
    assert audit_store.get_run(store, fresh)["status"] == "running"


def test_old_per_target_rows_are_pruned_after_a_full_audit(tmp_path):
    """AUTHGUARD_KEEP_DAYS: the targets of old runs go, their run rows and the latest stay."""
    from storage import audits as audit_store

    store = open_store(str(tmp_path / "a.db"))
    core = Authguard(Settings(keep_days=30), store, sample)
    old = core.audit("schedule").run
    with store.transaction() as db:
        db.execute(
            "update audit_runs set started_at = '2020-01-01T00:00' where id = ?", [old["id"]]
        )
    new = core.audit("schedule").run
    assert list(audit_store.iter_run_targets(store, old["id"])) == []
    assert audit_store.get_run(store, old["id"])["total"] == old["total"]  # the run row stays
    assert len(list(audit_store.iter_run_targets(store, new["id"]))) == new["total"]


def test_the_latest_audit_is_never_pruned_however_old(tmp_path):
    from storage import audits as audit_store

    store = open_store(str(tmp_path / "a.db"))
    run = Authguard(Settings(), store, sample).audit("cli").run
    assert audit_store.prune_targets(store, "2999-01-01T00:00") == 0
    assert len(list(audit_store.iter_run_targets(store, run["id"]))) == run["total"]
