"""Scoring generated samples against real data: feature extractors, judges, metrics, the per-loop sweep, tables and plots."""
