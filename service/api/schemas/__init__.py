"""Pydantic request and response types of the public API."""
