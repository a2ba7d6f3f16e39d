"""Test support: PostgreSQL servers for tests and small helpers."""
