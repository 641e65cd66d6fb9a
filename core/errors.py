"""Errors a user can cause: the CLI prints them as one sentence and exits with status 2."""

import argparse


class UsageError(Exception):
    """Bad input from a user (a value, a path, a model); its message names the value and what is allowed."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad input as one sentence and exit status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that cleanup runs as for Ctrl-C."""


_received: list[int] = []  # signals seen by this process; a library may swallow the exception itself


def _on_signal(signum, frame):
    import signal

    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def check_signals() -> None:
    """Raise the interrupt again if one arrived and was swallowed (distributed ignores exceptions raised
    in its gc callbacks): called before a result is committed, so an interrupted run never publishes."""
    import signal

    if _received:
        raise Terminated() if _received[-1] == signal.SIGTERM else KeyboardInterrupt()


def run_main(prog: str, body, resume: str = "") -> int:
    """Run a CLI body: user errors, interrupts and a full disk end in one sentence and a status.

    2: bad input (UsageError); 130: SIGINT; 143: SIGTERM; 1: disk full, another OS error, or the GPU out
    of memory."""
    import errno
    import signal
    import sys

    try:
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    except ValueError:  # not the main thread (tests calling main() from a worker thread)
        pass
    hint = f"; {resume}" if resume else ""
    try:
        status = body()
        check_signals()
        return status
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head` closed our output: nothing is wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{hint}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated{hint}", file=sys.stderr)
        return 143
    except OSError as err:
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        if err.errno == errno.ENOSPC:
            print(f"{prog}: error: the disk is full{where}: free some space and rerun{hint}", file=sys.stderr)
            return 1
        if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            print(f"{prog}: error: permission denied{where}: choose a writable path", file=sys.stderr)
            return 2
        if err.errno is None:
            raise
        import os

        # any other OS error while reading or writing (a file too large for the limit, an I/O error):
        # what was written is either whole or in a temporary sibling, and a rerun completes
        print(
            f"{prog}: error: {os.strerror(err.errno).lower()}{where}: fix that and rerun{hint}",
            file=sys.stderr,
        )
        return 1
    except Exception as err:
        if not gpu_out_of_memory(err):
            raise
        print(
            f"{prog}: error: the GPU ran out of memory ({first_sentences(str(err), 3)}): fewer processes on it "
            f"(analyze's --workers, with --answer-device cuda) or shorter documents need less{hint}",
            file=sys.stderr,
        )
        return 1


def gpu_out_of_memory(err: BaseException) -> bool:
    """torch's CUDA out-of-memory error, also as a Dask task's error re-raised in the client; told by
    its type's name so that a CLI which never loaded torch does not import it here."""
    return any(
        t.__name__ == "OutOfMemoryError" and t.__module__.startswith("torch") for t in type(err).__mro__
    )


def first_sentences(text: str, n: int) -> str:
    """The first `n` sentences of `text` (torch's out-of-memory message goes on to list processes)."""
    import re

    return " ".join(re.split(r"(?<=\.)\s+", text.strip())[:n]).rstrip(".")
