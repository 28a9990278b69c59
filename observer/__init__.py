"""Records how long AI agent participants stay in LiveKit rooms."""

__version__ = "0.1.0"
