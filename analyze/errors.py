"""Errors a user can cause in the analyze stage (one sentence, exit 2)."""

from dump.errors import UsageError

__all__ = ["UsageError"]
