"""Monitoring: Prometheus metrics (``metrics``, no threads) and drift monitoring (``drift/``)."""

from __future__ import annotations
