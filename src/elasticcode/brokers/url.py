"""A broker URL as every backend reads it: its address, its secrets, and its query options.

Options are read once, typed and bounded, and a bad one says which backend, which option, what
it takes and what it got. Durations take the flow files' forms (``30``, ``30s``, ``500ms``).
Secrets (a password, a token in the user's place) are masked in any text the backend prints.
The blob stores read their URLs with the same class (``storage/url.py``), speaking of stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import BrokerError, ElasticCodeError
from ..redact import mask, secrets_of
from ..units import parse_duration

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class BrokerURL:
    """``url`` parsed for the backend named ``backend`` (as it appears in errors).

    ``known``: the options the backend takes; any other is refused with the list. Without it,
    the options the backend does not read are handed to its client library (``passed``).
    """

    #: What a bad URL raises, and what its messages call the thing the URL names.
    error: type[ElasticCodeError] = BrokerError
    noun = "broker"

    def __init__(self, backend: str, url: str, known: Sequence[str] | None = None) -> None:
        self.backend = backend
        self.parts = urlsplit(url)
        self._pairs = parse_qsl(self.parts.query, keep_blank_values=True)
        self._values = dict(self._pairs)  # the last of a repeated option counts
        self._read: set[str] = set()
        self.secrets = secrets_of(url)
        if known is not None and (unknown := sorted(set(self._values) - set(known))):
            raise self._bad(
                f"{backend} {self.noun}: unknown option(s) {unknown}; known: {', '.join(known)}"
            )

    def _bad(self, text: str) -> ElasticCodeError:
        """The error of a bad URL or option, with the URL's secrets masked."""
        return self.error(self.mask(text))

    def mask(self, text: object) -> str:
        """``text`` with this URL's secrets masked."""
        return mask(text, self.secrets)

    def where(self, default_host: str, default_port: int) -> str:
        """``host:port`` of the server, for errors and logs."""
        try:
            port = self.parts.port
        except ValueError:
            raise self._bad(f"{self.backend} {self.noun} URL has an invalid port") from None
        return f"{self.parts.hostname or default_host}:{port or default_port}"

    # -- options ----------------------------------------------------------------------------
    def text(self, name: str, default: str | None = None) -> str | None:
        self._read.add(name)
        return self._values.get(name) or default

    def seconds(
        self, name: str, default: float, low: float = 0.0, high: float | None = None
    ) -> float:
        """A duration in seconds (``30``, ``30s``, ``500ms``, ``2m``) within the bounds."""
        raw = self.text(name)
        try:
            value = default if raw is None else parse_duration(raw)
        except ValueError:
            value = None
        return self._bounded(
            name, raw, value, low, high, "a number", " seconds (or a duration such as 30s or 500ms)"
        )

    def number(
        self, name: str, default: float, low: float | None = None, high: float | None = None
    ) -> float:
        raw = self.text(name)
        try:
            value = default if raw is None else float(raw)
        except ValueError:
            value = None
        return self._bounded(name, raw, value, low, high, "a number")

    def integer(
        self, name: str, default: int, low: int | None = None, high: int | None = None
    ) -> int:
        raw = self.text(name)
        try:
            value = default if raw is None else int(raw)
        except ValueError:
            value = None
        return int(self._bounded(name, raw, value, low, high, "a whole number"))

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise self._bad(f"{self.backend} {self.noun}: {name} must be true or false, not {raw!r}")

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        value = (self.text(name) or default).lower()
        if value not in choices:
            raise self._bad(
                f"{self.backend} {self.noun}: {name} must be {' or '.join(choices)}, not {value!r}"
            )
        return value

    def _bounded(
        self,
        name: str,
        raw: str | None,
        value: float | None,
        low: float | None,
        high: float | None,
        kind: str,
        unit: str = "",
    ) -> float:
        if value is not None and (low is None or value >= low) and (high is None or value <= high):
            return value
        if low is not None and high is not None:
            bounds = f" from {low:g} to {high:g}"
        elif low is not None:
            bounds = f" >= {low:g}"
        elif high is not None:
            bounds = f" <= {high:g}"
        else:
            bounds = ""
        raise self._bad(
            f"{self.backend} {self.noun}: {name} must be {kind}{bounds}{unit}, not {raw!r}"
        )

    def passed(self, **defaults: str) -> str:
        """The URL with only the options this backend did not read, for its client library,
        and ``defaults`` for those the URL does not give."""
        rest = [(k, v) for k, v in self._pairs if k not in self._read]
        rest += [(k, v) for k, v in defaults.items() if k not in self._values]
        return urlunsplit(self.parts._replace(query=urlencode(rest)))
