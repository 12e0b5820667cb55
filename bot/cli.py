"""The ``authguard`` command line (click).

Exit codes, like a linter: 0 nothing to report, 1 a target is ``warning`` or ``unknown``,
2 an error (bad configuration, directory unreachable, bind refused, bad input).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from bot import __version__
from bot.audit import FULL, AuditFailed, Scope, run_audit
from bot.commands import MAX_SERVER_NAME
from bot.config import ConfigError, Settings, load_settings
from bot.directory import Directory, connect, sample
from bot.logs import redact, secrets_of
from bot.report import summary_line, table_lines, target_json, write_json
from bot.rules import OPEN_VERDICTS
from bot.service import StatusResult, known_state
from storage import StorageError, Store, open_store
from storage import audits as audit_store

SAMPLE_DB = "authguard-sample.db"
VERDICT_COLOURS = {"warning": "red", "unknown": "magenta", "ok": "green", "exempt": "cyan"}


def fail(message: str) -> NoReturn:
    """Print ``authguard: error: message`` to stderr and exit 2."""
    click.echo(f"authguard: error: {message}", err=True)
    sys.exit(2)


class Context:
    """What every command needs: the settings, opened lazily, with one clear error on failure."""

    def __init__(self, config_file: str | None, options: dict[str, Any]) -> None:
        self.config_file = config_file
        self.options = options
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.options, config_file=self.config_file)
            except ConfigError as exc:
                fail(str(exc))
        return self._settings

    def store(self, sample_mode: bool = False) -> Store:
        path = self.settings.db
        if sample_mode and "db" not in self.settings.explicit:
            path = SAMPLE_DB
        try:
            return open_store(path)
        except StorageError as exc:
            fail(str(exc))

    def directory_opener(self, sample_mode: bool = False) -> Callable[[], Directory]:
        if sample_mode:
            return sample
        settings = self.settings
        try:
            settings.require("ldap_url")  # before anything is recorded: a set-up mistake
        except ConfigError as exc:
            fail(f"{exc} (or use --sample to try the bundled sample forest)")
        return lambda: connect(settings)


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="authguard")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML settings file ([ldap] url = ..., [slack] ...). Environment variables win over it.",
)
@click.option("--ldap-url", help="Directory URL, ldap://host:port or ldaps://host:port.")
@click.option("--db", help="SQLite database file (default: authguard.db).")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, ldap_url: str | None, db: str | None) -> None:
    """authguard: find Exchange SMTP servers that accept Basic authentication, and fix them.

    Settings come from options, then AUTHGUARD_* environment variables, then the --config
    file; the README lists them all. Exit codes: 0 clean, 1 findings, 2 error.
    """
    ctx.obj = Context(config_file, {"ldap_url": ldap_url, "db": db})


def _style(verdict: str, text: str) -> str:
    return click.style(text, fg=VERDICT_COLOURS.get(verdict))


def _exit_code(rows_or_run: Any) -> int:
    if isinstance(rows_or_run, dict):
        return 1 if (rows_or_run.get("warning") or rows_or_run.get("unknown")) else 0
    return 1 if any(r["verdict"] in OPEN_VERDICTS for r in rows_or_run) else 0


class _Progress:
    """A one-line counter on stderr while a long audit runs (only on a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.shown = False

    def __call__(self, count: int) -> None:
        if self.enabled and count % 250 == 0:
            click.echo(f"\rchecked {count} targets...", err=True, nl=False)
            self.shown = True

    def done(self) -> None:
        if self.shown:
            click.echo("\r" + " " * 40 + "\r", err=True, nl=False)


@main.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (a stable contract)."
)
@click.option(
    "--sample",
    is_flag=True,
    help=f"Audit the bundled sample forest (no AD needed); stored in {SAMPLE_DB} "
    "unless --db is set.",
)
@pass_context
def audit(context: Context, as_json: bool, sample: bool) -> None:
    """Run one audit of every Exchange SMTP virtual server and receive connector, and store it."""
    store = context.store(sample_mode=sample)
    progress = _Progress(enabled=not as_json and sys.stderr.isatty())
    try:
        run = _run(context, store, sample, progress=progress if progress.enabled else None)
    except AuditFailed as exc:
        progress.done()
        if as_json:
            write_json(sys.stdout, exc.run, [])
        fail(f"audit {exc.run['id']} failed: {exc}")
    progress.done()
    if as_json:
        write_json(sys.stdout, run, audit_store.iter_run_targets_json(store, run["id"]))
    else:
        for line in table_lines(audit_store.iter_run_targets(store, run["id"]), style=_style):
            click.echo(line)
        click.echo("")
        click.echo(summary_line(run))
    sys.exit(_exit_code(run))


def _run(
    context: Context,
    store: Store,
    sample: bool,
    scope: Scope = FULL,
    progress: _Progress | None = None,
) -> dict[str, Any]:
    """``run_audit`` for a command: raises :class:`AuditFailed` for the caller to word; a broken
    database or a bug ends the command with exit 2 (never 1, which means findings)."""
    try:
        return run_audit(
            context.settings,
            store,
            context.directory_opener(sample_mode=sample),
            trigger="cli",
            requested_by=_whoami(),
            scope=scope,
            progress=progress,
        )
    except AuditFailed:
        raise
    except StorageError as exc:
        _done(progress)
        fail(str(exc))
    except Exception as exc:  # a bug: the run is recorded as failed; say so without secrets
        _done(progress)
        detail = redact(" ".join(str(exc).split()), secrets_of(context.settings))[:300]
        fail(f"internal error ({exc.__class__.__name__}{': ' + detail if detail else ''})")


def _done(progress: _Progress | None) -> None:
    if progress is not None:
        progress.done()


def _whoami() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


@main.command()
@click.argument("server")
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
@click.option(
    "--live", is_flag=True, help="Re-read this server's targets from the directory first."
)
@click.option("--sample", is_flag=True, help="Use the bundled sample forest and its database.")
@pass_context
def status(context: Context, server: str, as_json: bool, live: bool, sample: bool) -> None:
    """Show the latest known state of one Exchange SERVER's targets."""
    server = server.strip()
    if not server or len(server) > MAX_SERVER_NAME or not server.isprintable():
        fail(f"give an Exchange server name (printable, at most {MAX_SERVER_NAME} characters)")
    store = context.store(sample_mode=sample)
    if live:
        # what was just read is the latest state: show it even before any full audit
        try:
            run = _run(context, store, sample, scope=Scope("server", server))
        except AuditFailed as exc:
            if exc.not_found:
                _not_found(known_state(store, server), in_directory=True)
            fail(f"live check {exc.run['id']} failed: {exc}")
        rows = list(audit_store.iter_run_targets(store, run["id"]))
    else:
        known = known_state(store, server)
        if not known.rows:
            _not_found(known)
        rows = known.rows
    if as_json:
        name = rows[0]["server"] if rows else server
        click.echo(
            json.dumps({"server": name, "targets": [target_json(r) for r in rows]}, indent=1)
        )
    elif not rows:
        click.echo(f"{server}: no SMTP virtual server or receive connector")
    else:
        for line in table_lines(rows, style=_style):
            click.echo(line)
        click.echo("")
        click.echo(f"last checked: {max(r['checked_at'] for r in rows)}")
    sys.exit(_exit_code(rows))


def _not_found(known: StatusResult, in_directory: bool = False) -> NoReturn:
    server = known.server
    hint = f"; did you mean {', '.join(known.matches)}?" if known.matches else ""
    if in_directory:
        fail(f"no Exchange server named {server!r} in the directory{hint}")
    if known.no_audit_yet:
        fail("no audit has succeeded yet: run `authguard audit` first")
    fail(f"no Exchange server named {server!r} in the latest audit{hint}")


@main.command()
@click.option(
    "--http",
    "http_mode",
    is_flag=True,
    help="Serve HTTP on POST /slack/events instead of Socket Mode.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="HTTP mode: address to listen on."
)
@click.option(
    "--port",
    default=3000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="HTTP mode: port.",
)
@click.option(
    "--sample", is_flag=True, help="Audit the bundled sample forest instead of AD (for a trial)."
)
@pass_context
def serve(context: Context, http_mode: bool, host: str, port: int, sample: bool) -> None:
    """Run the Slack bot: Socket Mode (SLACK_APP_TOKEN) or --http (SLACK_SIGNING_SECRET).

    Also needs SLACK_BOT_TOKEN and AUTHGUARD_SLACK_CHANNEL; runs the scheduled audit and summary.
    """
    from bot.logs import setup_logging

    # the Slack layer, loaded only for this command
    from handlers.runtime import Runtime, required_settings

    settings = context.settings
    setup_logging(settings)
    try:  # one message naming everything that is missing, directory and Slack alike
        settings.require(*(() if sample else ("ldap_url",)), *required_settings(not http_mode))
    except ConfigError as exc:
        fail(str(exc))
    if sample and "db" not in settings.explicit:
        from dataclasses import replace

        settings = replace(settings, db=SAMPLE_DB)
    try:
        runtime = Runtime(
            settings,
            socket_mode=not http_mode,
            open_directory=context.directory_opener(sample_mode=sample),
        )
    except (ConfigError, StorageError) as exc:
        fail(str(exc))
    except Exception as exc:  # e.g. Slack refused the bot token at start
        reason = redact(str(exc), secrets_of(settings))[:300]
        fail(f"cannot start: {exc.__class__.__name__}: {reason}")
    if http_mode:
        runtime.serve_http(host, port)
    else:
        runtime.serve_socket()


# -- remediation jobs and the audit log ------------------------------------------------------


def _existing_store(context: Context) -> Store:
    """The configured database; a missing file is an error (never create an empty one here)."""
    from pathlib import Path

    path = context.settings.db
    if path != ":memory:" and not Path(path).is_file():
        fail(f"no authguard database at {path} (set AUTHGUARD_DB or --db)")
    return context.store()


@main.group()
def remediate() -> None:
    """Remediation jobs: list recent ones, roll one back (exit 0 ok, 1 refused/failed)."""


@remediate.command("list")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many."
)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON lines.")
@pass_context
def remediate_list(context: Context, limit: int, as_json: bool) -> None:
    """Show the most recent remediation and rollback jobs, newest first."""
    from bot.rules import describe
    from storage.remediation import recent_jobs

    store = _existing_store(context)
    try:
        jobs = recent_jobs(store, limit)
    except StorageError as exc:
        fail(str(exc))
    if as_json:
        for job in jobs:
            click.echo(json.dumps(job, ensure_ascii=False))
        return
    if not jobs:
        click.echo("no remediation jobs yet")
        return
    click.echo(
        f"{'JOB':>5}  {'KIND':8}  {'MODE':7}  {'STATE':11}  {'SERVER':16}  {'NAME':28}  "
        "CHANGE  (STARTED, BY)"
    )
    for job in jobs:
        kind = job.get("target_kind")
        change = (
            f"{describe(kind, job['before'])} -> {describe(kind, job['after'])}"
            if kind
            else f"{job['before']} -> {job['after']}"
        )
        note = f", rolls back job {job['rolls_back_job_id']}" if job["rolls_back_job_id"] else ""
        who = job["actor_name"] or job["actor_id"] or "?"
        click.echo(
            f"{job['id']:>5}  {job['kind']:8}  {job['mode']:7}  {job['state']:11}  "
            f"{str(job.get('server') or '')[:16]:16}  {str(job.get('name') or '')[:28]:28}  "
            f"{change}  ({job['started_at'][:19].replace('T', ' ')}, {who}{note})"
        )


@remediate.command("rollback")
@click.argument("job_id", type=click.IntRange(min=1))
@pass_context
def remediate_rollback(context: Context, job_id: int) -> None:
    """Restore the value that fix job JOB_ID replaced (compare-and-swap, verified, logged).

    Refused when the value moved since the job, for a dry run, a job that changed nothing, or
    one already rolled back. The OS user is recorded as the actor.
    """
    from bot.remediation import NOT_FOUND, Actor, rollback

    store = _existing_store(context)
    actor = Actor(None, f"{_whoami() or 'unknown'} (cli)")
    try:
        result = rollback(context.settings, store, context.directory_opener(), job_id, actor)
    except StorageError as exc:
        fail(str(exc))
    if result.outcome == NOT_FOUND:
        fail(result.message)
    prefix = f"rollback job {result.job_id}: " if result.job_id not in (None, job_id) else ""
    click.echo(prefix + result.message)
    sys.exit(0 if result.ok else 1)


@main.group("log")
def log_group() -> None:
    """The tamper-evident audit log: verify its hash chain, export it for an auditor."""


@log_group.command("verify")
@pass_context
def log_verify(context: Context) -> None:
    """Recompute the hash chain: exit 0 when intact, 1 naming the first bad row."""
    from storage.audit_log import head, verify_log

    store = _existing_store(context)
    try:
        ok, bad_id, why = verify_log(store)
        last = head(store)
    except StorageError as exc:
        fail(str(exc))
    if ok:
        anchor = f"; head row {last['id']} hash {last['hash']}" if last else ""
        click.echo(f"audit log {why}{anchor}")
        sys.exit(0)
    click.echo(f"audit log TAMPERED: first bad row {bad_id}: {why}", err=True)
    sys.exit(1)


@log_group.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="JSON lines or CSV (with a header row).",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Only rows from this UTC day on (YYYY-MM-DD).",
)
@pass_context
def log_export(context: Context, fmt: str, since: Any) -> None:
    """Write the audit log to stdout, oldest first, with every row's hash and prev_hash."""
    import csv

    from storage.audit_log import COLUMNS, export_log

    store = _existing_store(context)
    out = click.get_text_stream("stdout")
    rows = export_log(store, since.date() if since else None)
    try:
        if fmt == "csv":
            writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
        else:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    except StorageError as exc:
        fail(str(exc))


if __name__ == "__main__":  # pragma: no cover
    main()
