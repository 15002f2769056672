"""Monitoring: Prometheus metrics, drift reference profiles and the drift monitor of a model
version."""

from __future__ import annotations

from headrace.monitoring.drift import (
    DriftConfig,
    DriftMonitor,
    DriftReport,
    ExportedCounts,
    FeatureDrift,
    WindowSummary,
    profile_fingerprint,
)
from headrace.monitoring.profile import (
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
    "DriftConfig",
    "DriftMonitor",
    "DriftReport",
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
