"""Dask client setup for every stage: a local cluster of worker processes by default, or an existing
scheduler (`--scheduler tcp://HOST:8786`)."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from core.errors import UsageError

CORES_ENV = "NIAH_WORKER_CORES"  # set in a local cluster's worker processes: their share of the cores


def _cores() -> int:
    """The cores this process may use: OMP_NUM_THREADS where it is set, else the host's."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


PRE_SPAWN = "distributed.nanny.pre-spawn-environ"


def worker_environ() -> dict:
    """What a local worker process starts with: Dask's own settings without MALLOC_TRIM_THRESHOLD_.
    Set at all, it turns off glibc's adaptive mmap threshold, so that every tensor or array above
    128 KiB is mapped and unmapped again: the answer pass ran 1.8x slower in a worker than alone
    (SmolLM2, 2k, one thread: 8.3 s against 4.5 s per document), the same as alone with the variable set."""
    import dask

    return {k: v for k, v in dict(dask.config.get(PRE_SPAWN, {})).items() if k != "MALLOC_TRIM_THRESHOLD_"}


@contextmanager
def client_for(
    scheduler: str | None = None,
    workers: int | None = None,
    timeout: float = 10.0,
    verbose: bool = True,
    stage: str = "analyze",
):
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as err:
            raise UsageError(
                f"cannot reach the Dask scheduler at {scheduler!r} ({type(err).__name__}): "
                f"check the address (tcp://HOST:PORT) and that the scheduler is running"
            ) from None
        try:
            if verbose:
                print(f"{stage}: joined {scheduler}, dashboard {client.dashboard_link}")
            yield client
        finally:
            client.close()
        return
    n = workers or max(1, min(4, os.cpu_count() or 1))
    with (
        dask.config.set({PRE_SPAWN: worker_environ()}),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            host="127.0.0.1",
            # a task's error reaches the client as its exception, which the CLI prints as one sentence;
            # the workers' own "Compute Failed" log lines would repeat it with a traceback
            silence_logs=logging.CRITICAL,
            # each worker process's share of this host's cores, for torch's threads (the answer
            # pass); Dask's nanny would otherwise pin every worker's BLAS to one thread
            env={CORES_ENV: str(max(1, _cores() // n))},
        ) as cluster,
        Client(cluster) as client,
    ):
        if verbose:
            print(f"{stage}: local cluster of {n} worker processes, dashboard {client.dashboard_link}")
        yield client
