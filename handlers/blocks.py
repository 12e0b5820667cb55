"""Block Kit builders: every message and view authguard shows in Slack, and nothing else.

Each builder returns ``(text, blocks)`` (``text`` is the notification fallback) or a view dict.
Every value that came from a person or a directory goes through :func:`esc` first.

>>> esc("<!channel> & *bold*")
'&lt;!channel&gt; &amp; *bold*'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot.rules import KINDS, OPEN_VERDICTS, RISK, VERDICTS, describe, reason_text
from bot.summary import Summary, sparkline

MAX_TARGETS_PER_MESSAGE = 15  # 3 blocks each, well under Slack's 50 blocks a message
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class ActionId(StrEnum):
    """Action ids of authguard's buttons and views: a contract, keep them."""

    APPROVE_FIX = "approve_fix"
    REQUIRE_TLS = "require_tls"
    ACCEPT_RISK = "accept_risk"
    RECHECK = "recheck"
    WAIVER_MODAL = "accept_risk_modal"


def esc(text: Any, limit: int = 500) -> str:
    """Escape text for mrkdwn (``& < >``), drop control characters and cut it to ``limit``."""
    value = _CONTROL.sub("", str(text))
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain(text: Any, limit: int = 150) -> dict[str, Any]:
    value = _CONTROL.sub("", str(text))
    return {"type": "plain_text", "text": value[:limit] or " ", "emoji": True}


def section(markdown: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": markdown[:3000]}}


def context(*items: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": i[:3000]} for i in items]}


def header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": plain(text)}


DIVIDER = {"type": "divider"}
VERDICT_ICON = {
    "warning": ":warning:",
    "unknown": ":grey_question:",
    "ok": ":white_check_mark:",
    "exempt": ":large_blue_circle:",
    "waived": ":hourglass_flowing_sand:",
}


def tls_words(value: Any) -> str:
    if value is None:
        return "unknown (not recorded for this kind)"
    return "required" if value else "*not required*"


def when(iso: str | None) -> str:
    """``2026-11-28 06:00 UTC`` from an ISO time (or ``never``)."""
    if not iso:
        return "never"
    return iso[:16].replace("T", " ") + " UTC"


# -- help --------------------------------------------------------------------------------------

HELP_TEXT = (
    "*authguard* finds Exchange SMTP servers that accept Basic authentication.\n"
    "• `/authguard status EX01`: the latest state of that server's virtual servers and connectors\n"
    "• `/authguard audit`: audit the whole directory now (results in this channel)\n"
    "• `/authguard summary`: the summary, now\n"
    "• `/authguard help`: this message\n"
    "You can also mention me (`@authguard status EX01`) or send me a direct message."
)


def help_message(problem: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    blocks = [section(HELP_TEXT)]
    if problem:
        blocks.insert(0, section(f":information_source: {problem}"))
    return "authguard usage", blocks


def error_message(text: str) -> tuple[str, list[dict[str, Any]]]:
    return text, [section(f":x: {text}")]


# -- status ------------------------------------------------------------------------------------


def target_lines(row: dict[str, Any]) -> str:
    """One target described in mrkdwn: name, kind, DN, flags in words, TLS, verdict, reason."""
    kind = KINDS[row["kind"]].label
    icon = VERDICT_ICON.get(row["verdict"], "")
    return (
        f"{icon} *{esc(row['name'], 200)}* ({kind}), verdict *{esc(row['verdict'])}*\n"
        f"`{esc(row['dn'], 600)}`\n"
        f"Flags: {esc(describe(row['kind'], row['flags']))} · TLS: {tls_words(row['tls_required'])}"
        f" · Severity: {esc(row.get('severity') or 'none')}\n"
        f"{esc(reason_text(row['verdict'], row.get('reason')))}"
    )


def status_message(
    server: str,
    rows: Sequence[dict[str, Any]],
    matches: Sequence[str] = (),
    no_audit_yet: bool = False,
) -> tuple[str, list[dict[str, Any]]]:
    """The answer to "what is the status of server EX01?"."""
    if no_audit_yet:
        return error_message("No audit has succeeded yet: try `/authguard audit` first.")
    if not rows:
        text = f"No Exchange server named *{esc(server, 100)}* in the latest audit."
        if matches:
            text += " Did you mean " + ", ".join(f"*{esc(m, 100)}*" for m in matches) + "?"
        return text, [section(f":mag: {text}")]
    name = rows[0]["server"]
    version = next((r["version"] for r in rows if r.get("version")), None)
    last = max(r["checked_at"] or "" for r in rows)
    blocks: list[dict[str, Any]] = [
        header(f"Status of {name}"),
        context(f"{esc(version or 'version unknown')} · last checked {when(last)}"),
    ]
    for row in rows[:MAX_TARGETS_PER_MESSAGE]:
        blocks.append(section(target_lines(row) + f"\n_checked {when(row['checked_at'])}_"))
    if len(rows) > MAX_TARGETS_PER_MESSAGE:
        blocks.append(context(f"…and {len(rows) - MAX_TARGETS_PER_MESSAGE} more targets"))
    open_count = sum(1 for r in rows if r["verdict"] in OPEN_VERDICTS)
    return f"Status of {name}: {open_count} open finding(s)", blocks


# -- audits ------------------------------------------------------------------------------------


def audit_result_message(
    run: dict[str, Any], joined: bool = False
) -> tuple[str, list[dict[str, Any]]]:
    """Posted in the channel where someone asked for an audit, when it is done."""
    prefix = "The audit that was already running" if joined else f"Audit #{run['id']}"
    if run["status"] != "succeeded":
        text = f":rotating_light: {prefix} FAILED: {esc(run.get('error') or 'unknown error')}"
        text += "\nNothing has been reported as fixed or clear. Check the directory connection."
        return f"Audit #{run['id']} failed", [section(text)]
    counts = ", ".join(f"{run.get(k) or 0} {k}" for k in VERDICTS)
    icon = ":warning:" if (run.get("warning") or run.get("unknown")) else ":white_check_mark:"
    text = f"{icon} {prefix} finished ({when(run.get('finished_at'))}): {counts}."
    return f"Audit #{run['id']} finished: {counts}", [section(text)]


# -- warnings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Button:
    """A button on a warning: ``action_id`` is an :class:`ActionId`, ``value`` an opaque id."""

    action_id: str
    text: str
    value: str
    style: str | None = None
    confirm: dict[str, Any] | None = None

    def element(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "button",
            "action_id": self.action_id,
            "text": plain(self.text, 75),
            "value": self.value[:2000],
        }
        if self.style:
            out["style"] = self.style
        if self.confirm:
            out["confirm"] = self.confirm
        return out


def confirm_dialog(title: str, text: str, ok: str = "Approve") -> dict[str, Any]:
    return {
        "title": plain(title, 100),
        "text": plain(text, 300),
        "confirm": plain(ok, 30),
        "deny": plain("Cancel", 30),
        "style": "danger",
    }


def warning_message(
    server: str,
    rows: Sequence[dict[str, Any]],
    resolved: bool = False,
    buttons: dict[str, Sequence[Button]] | None = None,
    notes: dict[str, str] | None = None,
    revision: str = "0",
) -> tuple[str, list[dict[str, Any]]]:
    """The one warning message of an Exchange server, with a section per offending target.

    ``buttons`` and ``notes`` are keyed by target key: each target gets its ``actions`` block
    (the buttons) or a note (why there is no button, or a job's outcome). ``revision`` makes
    block ids new on every update, as Slack asks.
    """
    buttons = buttons or {}
    notes = notes or {}
    version = next((r["version"] for r in rows if r.get("version")), None)
    waived_only = not resolved and all(r["verdict"] == "waived" for r in rows)
    if resolved:
        title = f"Resolved: Basic authentication on {server}"
        text = f"Resolved: no Exchange SMTP target on {server} has Basic authentication open now."
    elif waived_only:
        title = f"Risk accepted: Basic authentication on {server}"
        text = f"{server}: Basic authentication is waived on {len(rows)} target(s) for now."
    else:
        title = f"Basic authentication enabled on {server}"
        severe = sum(1 for r in rows if r.get("severity") == "high")
        text = f"{server}: {len(rows)} SMTP target(s) with Basic authentication or unknown flags"
        if severe:
            text += f", {severe} severe"
    blocks: list[dict[str, Any]] = [
        header(("✅ " if resolved else "⏳ " if waived_only else "⚠️ ") + title),
        context(f"Exchange server *{esc(server, 100)}* · {esc(version or 'version unknown')}"),
    ]
    if resolved:
        blocks.append(section(":white_check_mark: " + esc(text)))
    for index, row in enumerate(rows[:MAX_TARGETS_PER_MESSAGE]):
        key = row["target_key"]
        blocks.append({**section(target_lines(row)), "block_id": f"t{index}.{revision}"[:255]})
        if notes.get(key):
            blocks.append(context(notes[key]))
        if buttons.get(key) and not resolved and row["verdict"] != "ok":
            blocks.append(
                {
                    "type": "actions",
                    "block_id": f"a{index}.{revision}"[:255],
                    "elements": [b.element() for b in buttons[key]][:25],
                }
            )
    if len(rows) > MAX_TARGETS_PER_MESSAGE:
        more = len(rows) - MAX_TARGETS_PER_MESSAGE
        blocks.append(context(f"…and {more} more: `/authguard status {esc(server, 100)}`"))
    if not resolved and not waived_only:
        blocks.append(DIVIDER)
        blocks.append(context(":lock: " + RISK))
    return text, blocks


# -- summary and home --------------------------------------------------------------------------


def _finding_line(row: dict[str, Any], extra: str = "") -> str:
    kind = KINDS[row["kind"]].label
    return f"• *{esc(row['server'], 100)}* {esc(row['name'], 120)} ({kind}){extra}"


def summary_blocks(summary: Summary, title: str = "authguard daily summary") -> list[dict]:
    """The picture of the estate: used by the daily post and the App Home tab."""
    blocks: list[dict[str, Any]] = [header(title)]
    if summary.alarm:
        blocks.append(section(f":rotating_light: *{esc(summary.alarm)}*"))
    last = summary.last_run
    if last is not None:
        blocks.append(
            context(
                f"Last audit #{last['id']}: *{esc(last['status'])}*, {when(last['started_at'])}"
            )
        )
    if summary.last_success is not None:
        counts = summary.counts
        label = "" if not summary.alarm else f" (from audit #{summary.last_success['id']})"
        line = " · ".join(f"{VERDICT_ICON[k]} {counts.get(k, 0)} {k}" for k in VERDICTS)
        blocks.append(section(f"*Targets by verdict{label}:* {line}"))
        if not summary.alarm and summary.open_count == 0:
            blocks.append(
                section(":white_check_mark: All clear: no target has Basic authentication open.")
            )
    if summary.since is not None:
        changes = [f"*Since the last summary* ({when(summary.since)}):"]
        changes.append(f"{len(summary.new)} new, {len(summary.resolved)} resolved")
        for row in summary.new[:5]:
            changes.append(_finding_line(row, " — new"))
        for row in summary.resolved[:5]:
            changes.append(_finding_line(row, " — resolved"))
        blocks.append(section("\n".join(changes)))
    if summary.oldest_open:
        lines = ["*Oldest open warnings:*"]
        lines += [
            _finding_line(r, f", open since {when(r.get('first_seen'))}")
            for r in summary.oldest_open
        ]
        blocks.append(section("\n".join(lines)))
    values = [count for _, count in summary.trend]
    if summary.trend:
        first, last_day = summary.trend[0][0], summary.trend[-1][0]
        latest = next((v for v in reversed(values) if v is not None), None)
        blocks.append(
            context(
                f"Open warnings, {first} → {last_day}: `{sparkline(values)}`"
                + (f" (now {latest})" if latest is not None else "")
            )
        )
    return blocks


def summary_message(summary: Summary) -> tuple[str, list[dict[str, Any]]]:
    if summary.alarm:
        text = f"authguard summary: {summary.alarm}"
    else:
        text = f"authguard summary: {summary.open_count} open warning(s)"
    return text, summary_blocks(summary)


def home_view(summary: Summary) -> dict[str, Any]:
    """The App Home tab: the same picture as the summary, plus how to ask for more."""
    blocks = summary_blocks(summary, title="authguard")
    blocks.append(DIVIDER)
    blocks.append(section(HELP_TEXT))
    return {"type": "home", "blocks": blocks[:100]}


def thread_note(lines: Iterable[str]) -> str:
    """A thread reply listing what changed, one bullet a line."""
    return "\n".join(f"• {line}" for line in lines)


# -- approvals, jobs and waivers ---------------------------------------------------------------

JOB_ICON = {
    "verified": ":white_check_mark:",
    "dry_run": ":test_tube:",
    "drift": ":no_entry:",
    "failed": ":x:",
    "not_written": ":x:",
    "rolled_back": ":leftwards_arrow_with_hook:",
}


def job_note(job: dict[str, Any], approvers: Sequence[str], kind: str) -> str:
    """The outcome of a job on a target, shown in place of its buttons."""
    state = job.get("state") or "running"
    who = ", ".join(esc(a, 80) for a in approvers) or esc(job.get("actor_name") or "someone", 80)
    change = f"{esc(describe(kind, job.get('before')))} → {esc(describe(kind, job.get('after')))}"
    stamp = when(job.get("finished_at") or job.get("started_at"))
    label = {
        "verified": "Fixed and verified",
        "dry_run": "Dry run: every step but the write; nothing was changed",
        "drift": "Stopped: the target changed since the warning; nothing was written",
        "failed": "Failed; nothing was changed, the approved fix can be retried",
        "not_written": "Not written (found after a restart); the fix can be retried",
        "rolled_back": "Rolled back",
    }.get(state, f"In progress ({state})")
    if job.get("kind") == "rollback" and state == "verified":
        label = "Rolled back to the previous value, verified"
    icon = JOB_ICON.get(state, ":hourglass:")
    text = f"{icon} *{label}* — job #{job['id']}, approved by {who}, {stamp}: {change}"
    if job.get("observed") is not None and state == "verified":
        text += f" (read back: {job['observed']})"
    if job.get("error") and state not in ("verified", "dry_run"):
        text += f"\nReason: {esc(job['error'], 300)}"
    return text


def approvals_note(names: Sequence[str], required: int) -> str:
    """``Approved by alice (1 of 2): one more approver needed``."""
    who = ", ".join(esc(n, 80) for n in names)
    missing = required - len(names)
    return (
        f":ballot_box_with_check: Approved by {who} ({len(names)} of {required}): "
        f"{missing} more approver(s) needed"
    )


def waiver_modal(request_id: str, server: str, name: str, default_days: int = 90) -> dict:
    """The "accept the risk" modal: a reason and an expiry in days (at most 365)."""
    return {
        "type": "modal",
        "callback_id": ActionId.WAIVER_MODAL.value,
        "private_metadata": request_id,
        "title": plain("Accept the risk", 24),
        "submit": plain("Accept risk", 24),
        "close": plain("Cancel", 24),
        "blocks": [
            section(
                f"Accept Basic authentication on *{esc(name, 120)}* ({esc(server, 100)}) for a "
                "while, for example for a partner company that cannot use anything else. The "
                "warning comes back when the waiver expires."
            ),
            {
                "type": "input",
                "block_id": "reason",
                "label": plain("Reason"),
                "element": {
                    "type": "plain_text_input",
                    "action_id": "reason",
                    "multiline": True,
                    "min_length": 3,
                    "max_length": 500,
                },
            },
            {
                "type": "input",
                "block_id": "days",
                "label": plain("Expires after (days, at most 365)"),
                "element": {
                    "type": "number_input",
                    "action_id": "days",
                    "is_decimal_allowed": False,
                    "initial_value": str(default_days),
                    "min_value": "1",
                    "max_value": "365",
                },
            },
        ],
    }


def expired_message(request_id: str) -> tuple[str, list[dict[str, Any]]]:
    """An expired button: say so, and offer a recheck."""
    text = "This request has expired. Recheck the target to get fresh buttons."
    return text, [
        section(f":hourglass: {text}"),
        {
            "type": "actions",
            "elements": [Button(ActionId.RECHECK, "Recheck now", request_id).element()],
        },
    ]
