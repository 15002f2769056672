"""Traffic strategies on endpoints: split (A/B/n, sticky), canary with automatic rollback,
blue-green, bandits; shadow mirroring; feedback by request id; the experiment report.

Pure Python over a snapshot of state, like the batching policy: no gRPC, no ``_core``. The engine
drives it through :class:`Endpoints` (one per server) and :class:`ShadowMirror`::

    endpoints = Endpoints.from_file(path_or_None, state_dir=..., signature_of=engine_signature,
                                    on_event=log_count_and_audit)
    endpoints.add_model(name)                              # each loaded model (remove_model)
    route = endpoints.resolve(model_name, model_version, parameters, inputs)   # loop thread
    ...run route.model at route.version; answer with headrace_variant = route.variant...
    endpoints.complete(route, ok=..., latency_ns=..., request_id=..., outputs=...)
    mirror.offer(route, inputs, outputs)                   # after the answer is on its way
    endpoints.feedback(request_id, reward=..., label=..., endpoint=...)       # Feedback RPC
    endpoints.create/update/delete/switch/rollback/report  # AdminService, off the loop
    endpoints.persist()                                    # every few seconds, off the loop
"""

from headrace.routing.config import (
    EndpointConfig,
    ModelSignature,
    check_signatures,
    load_endpoints_file,
    parse_endpoint,
    parse_endpoints,
)
from headrace.routing.events import RoutingEvent
from headrace.routing.feedback import FeedbackAlreadyGivenError, RequestIds
from headrace.routing.report import ExperimentReport
from headrace.routing.router import (
    PIN_PARAMETER,
    EndpointExistsError,
    Endpoints,
    FeedbackItem,
    FeedbackReceipt,
)
from headrace.routing.runtime import Route
from headrace.routing.shadow import ShadowMirror

__all__ = [
    "PIN_PARAMETER",
    "EndpointConfig",
    "EndpointExistsError",
    "Endpoints",
    "ExperimentReport",
    "FeedbackAlreadyGivenError",
    "FeedbackItem",
    "FeedbackReceipt",
    "ModelSignature",
    "RequestIds",
    "Route",
    "RoutingEvent",
    "ShadowMirror",
    "check_signatures",
    "load_endpoints_file",
    "parse_endpoint",
    "parse_endpoints",
]
