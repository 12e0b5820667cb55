"""Scheduled work (APScheduler 3): the audit and the daily summary on cron schedules.

>>> jobs = {"audit": run_audit, "summary": post_summary}  # doctest: +SKIP
>>> build_scheduler(settings, store, jobs).start()        # doctest: +SKIP

Misfires coalesce (a bot that was down posts one summary, not a backlog), each job runs at most
one instance at a time, and with several processes on one database each firing runs once: the
first process to claim ``(job, fire time)`` in the database runs it, the others skip it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.config import Settings
from storage import Store, locks

log = logging.getLogger(__name__)

MISFIRE_GRACE_SECONDS = 6 * 3600  # run a missed firing late (once) rather than never
RETRY_MINUTES = 5


def triggers(settings: Settings) -> dict[str, CronTrigger | IntervalTrigger]:
    """The trigger of each scheduled job, in ``AUTHGUARD_TIMEZONE``."""
    zone = ZoneInfo(settings.timezone)
    return {
        "audit": CronTrigger.from_crontab(settings.audit_schedule, timezone=zone),
        "summary": CronTrigger.from_crontab(settings.summary_schedule, timezone=zone),
        "retry": IntervalTrigger(minutes=RETRY_MINUTES, timezone=zone),
    }


def last_fire_time(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The latest time at or before ``now`` when ``trigger`` was due (within the misfire grace
    window), or ``None``. A firing run late still gets the key of the time it was due."""
    due = trigger.get_next_fire_time(None, now - timedelta(seconds=MISFIRE_GRACE_SECONDS))
    last = None
    while due is not None and due <= now:
        last = due
        due = trigger.get_next_fire_time(due, due + timedelta(seconds=1))
    return last


def once_per_firing(
    store: Store,
    name: str,
    job: Callable[[], object],
    owner: str,
    clock: Callable[[], datetime],
    trigger: CronTrigger | None = None,
) -> Callable[[], None]:
    """Wrap ``job`` so that, across processes, only one runs each firing.

    A firing is keyed by the time it was due (from ``trigger``), so a process that runs it late
    (paused, busy) still finds it claimed; without a trigger, by the current minute.
    """

    def run() -> None:
        now = clock()
        due = last_fire_time(trigger, now) if trigger is not None else None
        key = (due or now).strftime("%Y-%m-%dT%H:%M")
        if not locks.claim_once(store, name, key, owner):
            log.info("scheduled %s for %s already claimed by another process", name, key)
            return
        log.info("scheduled %s starting (%s)", name, key)
        try:
            job()
        except Exception:
            log.exception("scheduled %s failed", name)

    run.__name__ = f"scheduled_{name}"
    return run


def build_scheduler(
    settings: Settings,
    store: Store,
    jobs: Mapping[str, Callable[[], object]],
    owner: str | None = None,
    clock: Callable[[], datetime] | None = None,
) -> BackgroundScheduler:
    """A scheduler (not started) with one job per name in ``jobs`` ("audit", "summary", "retry")."""
    zone = ZoneInfo(settings.timezone)
    owner = owner or locks.process_owner()
    clock = clock or (lambda: datetime.now(zone))
    scheduler = BackgroundScheduler(
        timezone=zone,
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": MISFIRE_GRACE_SECONDS,
        },
    )
    all_triggers = triggers(settings)
    for name, job in jobs.items():
        trigger = all_triggers[name]
        if name != "retry":  # the retry job is safe in every process; the others run once
            job = once_per_firing(store, name, job, owner, clock, trigger)
        scheduler.add_job(job, trigger, id=name, name=name, replace_existing=True)
    return scheduler
