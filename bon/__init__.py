"""bon: best-of-N sampling with judges."""

__version__ = "0.1.0"
