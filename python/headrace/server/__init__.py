"""The gRPC front end: a thin adapter over :class:`headrace.Engine`."""

from headrace.server.app import Server, serve

__all__ = ["Server", "serve"]
