"""The server: the control plane's API (one router per resource) and its background loops."""

from .app import create_app, serve
from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]
