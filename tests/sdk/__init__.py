"""Unit tests of the SDK against fake servicers."""
