"""`bon` command line: thin wrappers over library calls."""

from bon.cli.main import app

__all__ = ["app"]
