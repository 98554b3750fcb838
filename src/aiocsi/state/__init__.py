"""Durable state: one SQLite database per pool."""
