"""The audit log is append-only and hash-chained: edits, deletions and reordering are detected.

Tampering is simulated the way an intruder with the database file would do it: a raw sqlite3
connection that first drops the append-only triggers.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
from datetime import UTC, date, datetime

import pytest
from click.testing import CliRunner

from bot.cli import main
from storage import open_store
from storage.audit_log import (
    GENESIS,
    append,
    export_log,
    log_audit_run,
    row_hash,
    verify_log,
)


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "authguard.db")


@pytest.fixture
def store(db_path):
    store = open_store(db_path)
    yield store
    store.close()


def fill(store, count=5):
    for index in range(count):
        append(
            store,
            "approval",
            user_id=f"U{index}",
            user_name=f"user{index}",
            target_dn=f"CN={index},CN=SMTP",
            before=7,
            after=5,
            request_id=f"req{index}",
            detail={"n": index},
        )


def tamper(db_path, *statements):
    """Drop the triggers and run raw SQL, as someone editing the file would."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("DROP TRIGGER audit_log_no_delete")
    for statement in statements:
        conn.execute(statement)
    conn.close()


def cli(db_path, *args):
    return CliRunner().invoke(main, ["--db", db_path, *args])


def test_each_row_links_to_the_previous_rows_hash(store):
    fill(store, 3)
    rows = list(store.db["audit_log"].rows_where(order_by="id"))
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert rows[0]["prev_hash"] == GENESIS
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    assert rows[2]["prev_hash"] == rows[1]["hash"]
    assert all(row_hash(r) == r["hash"] for r in rows)
    assert verify_log(store) == (True, None, "intact: 3 rows")


def test_an_empty_log_is_intact(store):
    assert verify_log(store) == (True, None, "intact: 0 rows")


def test_triggers_refuse_update_and_delete(store, db_path):
    fill(store, 2)
    conn = sqlite3.connect(db_path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("update audit_log set user_name = 'mallory' where id = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("delete from audit_log where id = 2")
    conn.close()
    assert verify_log(store)[0] is True


def test_an_edited_row_is_named(store, db_path):
    fill(store)
    tamper(db_path, "update audit_log set user_name = 'mallory' where id = 3")
    ok, bad_id, why = verify_log(store)
    assert (ok, bad_id) == (False, 3)
    assert "altered" in why


def test_an_edited_row_with_a_recomputed_hash_breaks_the_next_link(store, db_path):
    fill(store)
    row = dict(store.db["audit_log"].get(3))
    row["user_name"] = "mallory"
    forged = row_hash(row)
    tamper(db_path, f"update audit_log set user_name = 'mallory', hash = '{forged}' where id = 3")
    assert verify_log(store)[:2] == (False, 4)


def test_a_deleted_row_is_named(store, db_path):
    fill(store)
    tamper(db_path, "delete from audit_log where id = 2")
    ok, bad_id, why = verify_log(store)
    assert (ok, bad_id) == (False, 2)
    assert "row 2 is missing" in why


def test_deleting_the_newest_rows_is_detected(store, db_path):
    fill(store)
    tamper(db_path, "delete from audit_log where id >= 4")
    ok, bad_id, why = verify_log(store)
    assert (ok, bad_id) == (False, 4)
    assert "newest rows were deleted" in why


def test_reordered_rows_are_detected(store, db_path):
    fill(store)
    tamper(
        db_path,
        "update audit_log set id = -2 where id = 2",
        "update audit_log set id = 2 where id = 3",
        "update audit_log set id = 3 where id = -2",
    )
    ok, bad_id, _ = verify_log(store)
    assert (ok, bad_id) == (False, 2)


def test_appends_from_many_threads_keep_one_chain(db_path):
    stores = [open_store(db_path) for _ in range(4)]
    barrier = threading.Barrier(4)

    def writer(index):
        barrier.wait()
        for n in range(25):
            append(stores[index], "approval", user_id=f"U{index}", detail={"n": n})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert verify_log(stores[0]) == (True, None, "intact: 100 rows")


def test_log_audit_run_records_the_counts(store):
    run = {"id": 7, "trigger": "cli", "scope": "full", "status": "succeeded", "warning": 2}
    with store.atomic() as conn:
        row = log_audit_run(conn, run, user_name="alice")
    assert row["event"] == "audit_run" and row["user_name"] == "alice"
    assert json.loads(row["detail"])["warning"] == 2


def test_cli_log_verify_exits_0_when_intact(store, db_path):
    fill(store)
    result = cli(db_path, "log", "verify")
    assert result.exit_code == 0, result.output
    assert "intact: 5 rows" in result.output


def test_cli_log_verify_exits_1_naming_the_first_bad_row(store, db_path):
    fill(store)
    tamper(db_path, "update audit_log set after = 7 where id = 4")
    result = cli(db_path, "log", "verify")
    assert result.exit_code == 1
    assert "first bad row 4" in result.output


def test_cli_log_commands_refuse_a_missing_database(tmp_path):
    result = cli(str(tmp_path / "nothing.db"), "log", "verify")
    assert result.exit_code == 2
    assert "no authguard database" in result.output


def test_export_jsonl_carries_everything_needed_to_recheck_the_hashes(store, db_path):
    fill(store, 3)
    result = cli(db_path, "log", "export")
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert all(row_hash(r) == r["hash"] for r in rows)
    assert json.loads(rows[0]["detail"]) == {"n": 0}


def test_export_csv_with_header(store, db_path):
    fill(store, 2)
    result = cli(db_path, "log", "export", "--format", "csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["id"] for r in rows] == ["1", "2"]
    assert rows[1]["prev_hash"] == rows[0]["hash"]


def test_export_since_a_day(store, db_path):
    append(store, "approval", at=datetime(2026, 1, 10, 23, 59, tzinfo=UTC))
    append(store, "approval", at=datetime(2026, 1, 11, 0, 0, tzinfo=UTC))
    assert [r["id"] for r in export_log(store, since=date(2026, 1, 11))] == [2]
    result = cli(db_path, "log", "export", "--since", "2026-01-11")
    assert [json.loads(line)["id"] for line in result.output.splitlines()] == [2]


@pytest.mark.parametrize(
    "args", [["--since", "yesterday"], ["--since", "2026-13-01"], ["--format", "xml"]]
)
def test_export_bad_input_exits_2(store, db_path, args):
    result = cli(db_path, "log", "export", *args)
    assert result.exit_code == 2
    assert "Invalid value" in result.output
