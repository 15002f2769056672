"""Which loaded version serves a request: by model and version, or by the variant a route names.

Requests read the manager's immutable snapshot (one dict lookup, no lock) and lease the version
they run on, so that a swap can wait for them before closing it.
"""

from __future__ import annotations

from headrace.errors import NotFoundError, UnavailableError
from headrace.registry.manager import ModelManager, ServedVersion
from headrace.routing import Route

# How often a request retries the lookup when its version was retired between the lookup and
# the lease (a swap in progress); the second lookup sees the new snapshot.
LEASE_ATTEMPTS = 3


def served_version(models: ModelManager, name: str, version: str | int | None) -> ServedVersion:
    """The version serving ``name`` (the latest when ``version`` is empty); NotFoundError."""
    model = models.get(name)
    if model is None or not model.versions:
        raise NotFoundError(
            f"unknown model '{name}'"
            if model is None
            else f"model '{name}' is not ready: {model.reason}"
        )
    if version is None or version == "":
        latest = model.latest
        assert latest is not None  # versions is not empty
        return latest
    return model.resolve(version)  # a number, or an alias of the model


def lease_version(
    models: ModelManager, name: str, version: str | int | None, client: bool = True
) -> ServedVersion:
    """The serving version, with one in-flight request counted on it (release after, with the
    same ``client``: False for a shadow copy)."""
    for _ in range(LEASE_ATTEMPTS):
        served = served_version(models, name, version)
        if served.lease.acquire(client):
            return served
    raise UnavailableError(f"model '{name}' is being swapped; retry")


def lease_route(models: ModelManager, route: Route) -> ServedVersion:
    """The version a route's variant runs, leased. A declared endpoint whose variant's model or
    version is missing is the server's failure (UNAVAILABLE, naming the variant), not the
    client's: the client named a valid endpoint."""
    try:
        return lease_version(models, route.model, route.version or None)
    except NotFoundError as error:
        if route.runtime.implicit:
            raise
        raise UnavailableError(
            f"endpoint '{route.endpoint}', variant '{route.variant}': {error.message}"
        ) from None
