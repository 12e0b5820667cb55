"""The floor for a Python client: the LDAP operations an audit makes, with ldap3 and nothing else.

Binds as the service account, then runs each paged search (page size 500) that ``authguard audit``
runs, with the same attributes and the same ldap3 options as ``bot.directory.connect``, and counts
the entries. It imports nothing from authguard, so its interpreter start and imports are ldap3's
alone. ``benchmarks/run.py`` starts it with its settings as JSON in ``AUTHGUARD_BENCH_BARE``::

    {"url": "ldaps://127.0.0.1:636", "ca_file": "ca.pem", "bind_dn": "...", "password": "...",
     "timeout": 15, "page_size": 500, "searches": [["base", "(filter)", ["attr", ...]], ...]}

Prints the number of entries read; exits 2 if a search fails.
"""

from __future__ import annotations

import json
import math
import os
import ssl
import sys
from urllib.parse import urlsplit

from ldap3 import NONE, SIMPLE, SUBTREE, Connection, Server, Tls

PAGED_RESULTS = "1.2.840.113556.1.4.319"


def main() -> int:
    config = json.loads(os.environ["AUTHGUARD_BENCH_BARE"])
    url = urlsplit(config["url"])
    use_ssl = url.scheme == "ldaps"
    tls = Tls(ca_certs_file=config["ca_file"], validate=ssl.CERT_REQUIRED) if use_ssl else None
    server = Server(
        url.hostname,
        port=url.port,
        use_ssl=use_ssl,
        tls=tls,
        get_info=NONE,
        connect_timeout=config["timeout"],
    )
    connection = Connection(
        server,
        user=config["bind_dn"],
        password=config["password"],
        authentication=SIMPLE,
        receive_timeout=max(1, math.ceil(config["timeout"])),
        raise_exceptions=False,
        auto_referrals=False,
        return_empty_attributes=False,
    )
    connection.open()
    if not connection.bind():
        print(f"bind refused: {connection.result}", file=sys.stderr)
        return 2
    entries = 0
    for base, search_filter, attributes in config["searches"]:
        cookie = None
        while True:
            connection.search(
                base,
                search_filter,
                SUBTREE,
                attributes=attributes,
                paged_size=config["page_size"],
                paged_cookie=cookie,
            )
            result = connection.result
            if result["result"] != 0:
                print(f"search failed: {result}", file=sys.stderr)
                return 2
            entries += sum(1 for e in connection.response if e["type"] == "searchResEntry")
            cookie = result["controls"][PAGED_RESULTS]["value"]["cookie"]
            if not cookie:
                break
    connection.unbind()
    print(entries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
