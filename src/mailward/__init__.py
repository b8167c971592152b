"""mailward: a secure-by-default mail system."""

__version__ = "0.1.0"
