"""What the Slack listeners need from the rest of authguard, in one object built at start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.config import Settings
from bot.service import Authguard
from storage import Store

if TYPE_CHECKING:
    from handlers.notifier import Notifier


@dataclass
class Services:
    """The settings, the database, the command core and the warning notifier."""

    settings: Settings
    store: Store
    core: Authguard
    notifier: Notifier
