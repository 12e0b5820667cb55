"""authguard's core: configuration, directory access, audit rules, remediation, scheduling, CLI.

Nothing in this package imports Slack; ``handlers/`` builds the Slack app on top of it.
"""

__version__ = "0.1.0"
