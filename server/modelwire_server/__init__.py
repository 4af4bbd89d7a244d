"""Modelwire server: serves Hugging Face transformers models over gRPC."""

__version__ = "0.1.0"
