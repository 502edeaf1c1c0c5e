"""Metrics, protocols, reports."""
