"""Who may call what: bearer tokens, mTLS client certificates, and the protected default.

Control RPCs (RepositoryModelLoad/Unload and the whole ``headrace.v1.AdminService``) change what
is served. They are
  * off when ``control_rpcs = "off"``;
  * open to anyone who reaches the port only in the protected default, as Redis's protected
    mode: the server listens on loopback or a Unix socket only and no token or client CA is set;
  * otherwise they need ``authorization: Bearer <admin token>`` (``--admin-token-file``) or,
    without an admin token, mutual TLS (``--tls-client-ca``: every caller then presents a
    certificate that CA signed, and such a caller may control); bound to another address with
    neither, they are off and say how to turn them on. To let certified callers infer but not
    control, set an admin token as well.
Inference RPCs need ``--inference-token-file``'s token when one is set (off by default); the
admin token is accepted there too. ``headrace.v1.FeedbackService`` is such an RPC, not a control
one: clients that infer send feedback on their answers. No token -> UNAUTHENTICATED; a wrong one
-> PERMISSION_DENIED. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from headrace.config import ServerSettings
from headrace.errors import ConfigError

log = logging.getLogger(__name__)

CONTROL_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        "/inference.GRPCInferenceService/RepositoryModelUnload",
    }
)
CONTROL_SERVICE_PREFIX = "/headrace.v1.AdminService/"
# Health and reflection stay open: orchestrators probe them without credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def read_token(path: Path, what: str) -> bytes:
    try:
        token = path.read_bytes().strip()
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read: {error.strerror}") from None
    if len(token) < 16:
        raise ConfigError(f"{what} {path} holds fewer than 16 characters: use a long random token")
    return token


def is_local_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AccessPolicy:
    """What the settings allow; decided once at start-up."""

    control_enabled: bool
    control_needs_credentials: bool
    admin_token: bytes | None
    inference_token: bytes | None
    client_ca: bool
    why_control_off: str = ""

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> AccessPolicy:
        admin = (
            read_token(settings.admin_token_file, "admin token file")
            if settings.admin_token_file is not None
            else None
        )
        inference = (
            read_token(settings.inference_token_file, "inference token file")
            if settings.inference_token_file is not None
            else None
        )
        client_ca = settings.tls_client_ca is not None
        credentials = admin is not None or client_ca
        if settings.control_rpcs == "off":
            return cls(False, True, admin, inference, client_ca, "turned off (control_rpcs=off)")
        local = is_local_host(settings.host)
        if credentials:
            return cls(True, True, admin, inference, client_ca)
        if local or settings.control_rpcs == "on":
            # Protected default: whoever can reach loopback or the socket may control.
            return cls(True, False, admin, inference, client_ca)
        return cls(
            False,
            True,
            admin,
            inference,
            client_ca,
            f"off because the server listens on {settings.host} without credentials; start it "
            "with --admin-token-file FILE or --tls-client-ca PEM (or --control-rpcs on to open "
            "them to anyone who reaches the port)",
        )

    def needs_check(self, method: str) -> bool:
        """False when :meth:`check` lets every caller of ``method`` through."""
        if method.startswith(OPEN_PREFIXES):
            return False
        if method in CONTROL_METHODS or method.startswith(CONTROL_SERVICE_PREFIX):
            return not self.control_enabled or self.control_needs_credentials
        return self.inference_token is not None

    def check(self, method: str, metadata: tuple[tuple[str, Any], ...], peer_cert: bool) -> None:
        """Raise ``AccessDenied`` when ``method`` may not be called with these credentials."""
        if method.startswith(OPEN_PREFIXES):
            return
        presented = _bearer(metadata)
        if method in CONTROL_METHODS or method.startswith(CONTROL_SERVICE_PREFIX):
            if not self.control_enabled:
                raise AccessDenied(
                    grpc.StatusCode.PERMISSION_DENIED, f"control RPCs are {self.why_control_off}"
                )
            if not self.control_needs_credentials:
                return
            if self.admin_token is None and self.client_ca and peer_cert:
                return
            self._match(presented, [self.admin_token], "an admin token")
            return
        if self.inference_token is not None:
            if self.client_ca and peer_cert:
                return
            self._match(presented, [self.inference_token, self.admin_token], "a token")

    @staticmethod
    def _match(presented: bytes | None, tokens: list[bytes | None], what: str) -> None:
        if presented is None:
            raise AccessDenied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"this RPC needs {what}: send 'authorization: Bearer <token>'",
            )
        # Every candidate is compared (constant time each), so timing tells nothing.
        matched = False
        for token in tokens:
            if token is not None and hmac.compare_digest(presented, token):
                matched = True
        if not matched:
            raise AccessDenied(grpc.StatusCode.PERMISSION_DENIED, "the token is not accepted here")


class AccessDenied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _bearer(metadata: tuple[tuple[str, Any], ...]) -> bytes | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip().encode()
    return None


def guarded(policy: AccessPolicy, method: str, behaviour: Any) -> Any:
    """``behaviour`` (a servicer method) behind the policy's check for ``method`` (its full
    path), or ``behaviour`` itself when the policy lets every caller through -- inference in the
    default settings: the hot path pays nothing (a server interceptor, which runs for every
    call, measured ~10 us of CPU per ModelInfer). Bound once, when the handlers are built."""
    if not policy.needs_check(method):
        return behaviour

    def denial(context: Any) -> AccessDenied | None:
        peer_cert = False
        if policy.client_ca:
            auth = context.auth_context()
            peer_cert = bool(auth.get("x509_common_name") or auth.get("x509_pem_cert"))
        try:
            policy.check(method, tuple(context.invocation_metadata() or ()), peer_cert)
        except AccessDenied as denied:
            return denied
        return None

    if inspect.isasyncgenfunction(behaviour):

        async def streamed(request: Any, context: Any) -> AsyncIterator[Any]:
            denied = denial(context)
            if denied is not None:
                await context.abort(denied.code, denied.message)
            async for item in behaviour(request, context):
                yield item

        return streamed

    async def answered(request: Any, context: Any) -> Any:
        denied = denial(context)
        if denied is not None:
            await context.abort(denied.code, denied.message)
        return await behaviour(request, context)

    return answered
