"""The --json targets are encoded by SQLite; they must equal the Python form field for field."""

import json

from bot.audit import run_audit
from bot.config import Settings
from bot.directory import sample
from bot.report import target_json
from storage import audits as audit_store
from storage import open_store


def test_sqlite_json_matches_the_python_contract(tmp_path):
    store = open_store(str(tmp_path / "a.db"))
    run = run_audit(Settings(), store, sample, trigger="cli")
    from_sql = [json.loads(t) for t in audit_store.iter_run_targets_json(store, run["id"])]
    from_rows = [target_json(r) for r in audit_store.iter_run_targets(store, run["id"])]
    assert from_sql == from_rows
    assert {type(t["basic_auth"]) for t in from_sql} <= {bool, type(None)}
    assert any(t["tls_required"] is None for t in from_sql)
    assert any(t["tls_required"] is True for t in from_sql)
    assert any(t["tls_required"] is False for t in from_sql)


def test_a_run_and_a_server_are_found_by_index(tmp_path):
    store = open_store(str(tmp_path / "a.db"))
    for sql in (
        "select * from audit_targets where audit_id = 1 order by server collate nocase, kind, dn",
        "select * from audit_targets where audit_id >= 1 and server = 'EX01' collate nocase",
    ):
        plan = " ".join(str(row) for row in store.db.execute("explain query plan " + sql))
        assert "idx_audit_targets_run_server" in plan, plan
