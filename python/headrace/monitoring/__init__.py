"""Monitoring: Prometheus metrics, drift profiles and reports."""
