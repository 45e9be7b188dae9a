"""A blob store URL as every backend reads it: the brokers' URL reader, speaking of stores.

Options are typed and bounded exactly as broker options are (``brokers/url.py``: durations as
``30s``, sizes as plain bytes, unknown options refused with the list); a bad one raises a
``StorageError`` naming the store backend, with the URL's secrets masked.
"""

from __future__ import annotations

from ..brokers.url import BrokerURL
from ..errors import StorageError


class StoreURL(BrokerURL):
    """``url`` parsed for the blob backend named ``backend``; see ``BrokerURL``."""

    error = StorageError
    noun = "blob store"
