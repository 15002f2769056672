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
import ipaddress
import logging
from collections.abc import Awaitable, Callable
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
INFERENCE_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelStreamInfer",
    }
)
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


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Applies an AccessPolicy before any handler runs."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy
        self._open_inference = policy.inference_token is None

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if self._open_inference and method in INFERENCE_METHODS:
            return handler  # the hot path: nothing to check
        metadata = tuple(handler_call_details.invocation_metadata or ())
        try:
            # The peer's certificate is only visible in the call's context: check it there.
            self._policy.check(method, metadata, peer_cert=False)
        except AccessDenied as denied:
            if not self._policy.client_ca:
                return _refusing(handler, denied)
            return _checking_certificate(handler, self._policy, method, metadata, denied)
        return handler


def _refusing(handler: Any, denied: AccessDenied) -> Any:
    async def refuse_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(denied.code, denied.message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(denied.code, denied.message)
        yield  # pragma: no cover - abort raises

    return _replace(handler, refuse_unary, refuse_stream)


def _checking_certificate(
    handler: Any,
    policy: AccessPolicy,
    method: str,
    metadata: tuple[tuple[str, Any], ...],
    denied: AccessDenied,
) -> Any:
    def has_certificate(context: Any) -> bool:
        auth = context.auth_context()
        return bool(auth.get("x509_common_name") or auth.get("x509_pem_cert"))

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            policy.check(method, metadata, peer_cert=has_certificate(context))
        except AccessDenied as error:
            await context.abort(error.code, error.message)
        inner = handler.unary_unary or handler.unary_stream
        return await inner(request, context)

    async def stream(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            policy.check(method, metadata, peer_cert=has_certificate(context))
        except AccessDenied as error:
            await context.abort(error.code, error.message)
        async for item in handler.stream_stream(request_iterator, context):
            yield item

    return _replace(handler, unary, stream)


def _replace(handler: Any, unary: Any, stream: Any) -> Any:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # the v2 service has no other shapes
