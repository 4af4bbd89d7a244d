"""Modelwire: a typed asyncio client for the Modelwire gRPC model server."""

__version__ = "0.1.0"
