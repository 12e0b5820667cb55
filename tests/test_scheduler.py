"""Scheduled work: cron triggers in the configured time zone, coalesced misfires, one run per
firing across processes (checked with a fake clock, no waiting)."""

from datetime import datetime
from zoneinfo import ZoneInfo

from bot.config import load_settings
from bot.scheduler import build_scheduler, once_per_firing
from storage import open_store

BERLIN = ZoneInfo("Europe/Berlin")


def make(tmp_path, **env):
    settings = load_settings(env={"AUTHGUARD_TIMEZONE": "Europe/Berlin", **env})
    store = open_store(str(tmp_path / "a.db"))
    calls = []
    jobs = {
        "audit": lambda: calls.append("audit"),
        "summary": lambda: calls.append("summary"),
        "retry": lambda: calls.append("retry"),
    }
    return (
        build_scheduler(
            settings, store, jobs, clock=lambda: datetime(2026, 11, 28, 6, 0, tzinfo=BERLIN)
        ),
        store,
        calls,
    )


def test_default_schedules_fire_at_six_and_nine_in_the_time_zone(tmp_path):
    scheduler, _, _ = make(tmp_path)
    now = datetime(2026, 11, 28, 5, 30, tzinfo=BERLIN)
    audit = scheduler.get_job("audit").trigger.get_next_fire_time(None, now)
    summary = scheduler.get_job("summary").trigger.get_next_fire_time(None, now)
    assert (audit.hour, audit.minute, audit.tzinfo.key) == (6, 0, "Europe/Berlin")
    assert (summary.hour, summary.minute) == (9, 0)


def test_custom_cron_is_used(tmp_path):
    scheduler, _, _ = make(tmp_path, AUTHGUARD_AUDIT_SCHEDULE="*/30 8-18 * * mon-fri")
    now = datetime(2026, 11, 28, 12, 10, tzinfo=BERLIN)  # a Saturday
    nxt = scheduler.get_job("audit").trigger.get_next_fire_time(None, now)
    assert nxt == datetime(2026, 11, 30, 8, 0, tzinfo=BERLIN)


def test_misfires_coalesce_into_one_run(tmp_path):
    scheduler, _, _ = make(tmp_path)
    scheduler.start(paused=True)
    try:
        for name in ("audit", "summary"):
            job = scheduler.get_job(name)
            assert job.coalesce is True and job.max_instances == 1
            assert job.misfire_grace_time >= 3600
    finally:
        scheduler.shutdown(wait=False)


def test_jobs_run_the_given_callables(tmp_path):
    scheduler, _, calls = make(tmp_path)
    scheduler.get_job("audit").func()
    scheduler.get_job("summary").func()
    scheduler.get_job("retry").func()
    assert calls == ["audit", "summary", "retry"]


def test_each_firing_runs_once_across_processes(tmp_path):
    store = open_store(str(tmp_path / "shared.db"))
    ran = []
    clock = lambda: datetime(2026, 11, 28, 9, 0, 12, tzinfo=BERLIN)  # noqa: E731
    first = once_per_firing(store, "summary", lambda: ran.append("p1"), "host:1", clock)
    second = once_per_firing(store, "summary", lambda: ran.append("p2"), "host:2", clock)
    first()
    second()
    assert ran == ["p1"]
    later = once_per_firing(
        store,
        "summary",
        lambda: ran.append("next day"),
        "host:2",
        lambda: datetime(2026, 11, 29, 9, 0, tzinfo=BERLIN),
    )
    later()
    assert ran == ["p1", "next day"]


def test_a_late_firing_keeps_the_key_of_the_time_it_was_due(tmp_path):
    """A paused process that runs the 09:00 summary at 09:07 still finds it claimed."""
    from apscheduler.triggers.cron import CronTrigger

    store = open_store(str(tmp_path / "shared.db"))
    trigger = CronTrigger.from_crontab("0 9 * * *", timezone=BERLIN)
    ran = []
    on_time = once_per_firing(
        store,
        "summary",
        lambda: ran.append("on time"),
        "host:1",
        lambda: datetime(2026, 11, 28, 9, 0, 2, tzinfo=BERLIN),
        trigger,
    )
    late = once_per_firing(
        store,
        "summary",
        lambda: ran.append("late"),
        "host:2",
        lambda: datetime(2026, 11, 28, 9, 7, 30, tzinfo=BERLIN),
        trigger,
    )
    on_time()
    late()
    assert ran == ["on time"]
