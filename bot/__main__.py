"""``python -m bot`` is the ``authguard`` command."""

from bot.cli import main

main()
