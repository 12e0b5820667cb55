"""The ``authguard`` command line (click).

Exit codes, like a linter: 0 nothing to report, 1 a target is ``warning`` or ``unknown``,
2 an error (bad configuration, directory unreachable, bind refused, bad input).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from bot import __version__
from bot.audit import AuditFailed, Scope, run_audit
from bot.config import ConfigError, Settings, load_settings
from bot.directory import Directory, connect, sample
from bot.report import summary_line, table_lines, write_json
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
    return 1 if any(r["verdict"] in {"warning", "unknown"} for r in rows_or_run) else 0


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
        run = run_audit(
            context.settings,
            store,
            context.directory_opener(sample_mode=sample),
            trigger="cli",
            requested_by=_whoami(),
            progress=progress,
        )
    except AuditFailed as exc:
        progress.done()
        if as_json:
            write_json(sys.stdout, exc.run, [])
        fail(f"audit {exc.run['id']} failed: {exc}")
    except StorageError as exc:
        progress.done()
        fail(str(exc))
    progress.done()
    rows = audit_store.iter_run_targets(store, run["id"])
    if as_json:
        write_json(sys.stdout, run, rows)
    else:
        for line in table_lines(rows, style=_style):
            click.echo(line)
        click.echo("")
        click.echo(summary_line(run))
    sys.exit(_exit_code(run))


def _whoami() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def close_matches(name: str, names: list[str]) -> list[str]:
    """Up to five known names like ``name`` (case-insensitive), for "did you mean"."""
    lowered = {n.lower(): n for n in names}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=5, cutoff=0.5)
    prefix = [n for low, n in lowered.items() if low.startswith(name.lower()[:3]) and name]
    return list(dict.fromkeys([lowered[f] for f in found] + prefix))[:5]


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
    if not server or len(server) > 256 or not server.isprintable():
        fail("give an Exchange server name (printable, at most 256 characters)")
    store = context.store(sample_mode=sample)
    if live:
        try:
            run_audit(
                context.settings,
                store,
                context.directory_opener(sample_mode=sample),
                trigger="cli",
                requested_by=_whoami(),
                scope=Scope("server", server),
            )
        except AuditFailed as exc:
            if exc.run.get("error", "").startswith("no Exchange server named"):
                _not_found(store, server)
            fail(str(exc))
    rows = audit_store.current_targets(store, server)
    if not rows:
        _not_found(store, server)
    if as_json:
        import json

        from bot.report import target_json

        click.echo(
            json.dumps(
                {"server": rows[0]["server"], "targets": [target_json(r) for r in rows]}, indent=1
            )
        )
    else:
        for line in table_lines(rows, style=_style):
            click.echo(line)
        click.echo("")
        click.echo(f"last checked: {max(r['checked_at'] for r in rows)}")
    sys.exit(_exit_code(rows))


def _not_found(store: Store, server: str) -> NoReturn:
    if audit_store.latest_run(store, status="succeeded") is None:
        fail("no audit has succeeded yet: run `authguard audit` first")
    matches = close_matches(server, audit_store.known_servers(store))
    hint = f"; did you mean {', '.join(matches)}?" if matches else ""
    fail(f"no Exchange server named {server!r} in the latest audit{hint}")


if __name__ == "__main__":  # pragma: no cover
    main()
