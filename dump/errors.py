"""Errors a user can cause: the CLI prints them as one sentence and exits with status 2."""


class UsageError(Exception):
    """Bad input from a user (a value, a path, a model); its message names the value and what is allowed."""
