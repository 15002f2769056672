"""Drift monitoring: reference profiles (``profile``), the counting monitor and its statistics
(``monitor``), drift on the serving path (``served``), Prometheus gauges (``gauges``), retraining
triggers (``triggers``), the watcher thread (``watcher``) and model profiling (``model_profile``).
"""

from __future__ import annotations

from headrace.config import DriftSettings
from headrace.monitoring.drift.monitor import (
    DriftMonitor,
    DriftReport,
    ExportedCounts,
    FeatureDrift,
    WindowSummary,
    profile_fingerprint,
)
from headrace.monitoring.drift.profile import (
    FORMAT_VERSION,
    FeatureProfile,
    InputLayout,
    ProfileFormatError,
    ReferenceProfile,
    build_profile,
    read_data,
)

__all__ = [
    "FORMAT_VERSION",
    "DriftMonitor",
    "DriftReport",
    "DriftSettings",
    "ExportedCounts",
    "FeatureDrift",
    "FeatureProfile",
    "InputLayout",
    "ProfileFormatError",
    "ReferenceProfile",
    "WindowSummary",
    "build_profile",
    "profile_fingerprint",
    "read_data",
]
