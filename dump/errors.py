"""Errors a user can cause: the CLI prints them as one sentence and exits with status 2."""

import argparse


class UsageError(Exception):
    """Bad input from a user (a value, a path, a model); its message names the value and what is allowed."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad input as one sentence and exit status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
