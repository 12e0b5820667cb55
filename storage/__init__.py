"""Every SQL table authguard keeps, and the only place SQL is written.

``open_store(path)`` gives a :class:`~storage.db.Store`; the modules beside it hold plain
functions over its database, one module per subject (audits, ...).
"""

from storage.db import StorageError, Store, open_store

__all__ = ["Store", "StorageError", "open_store"]
