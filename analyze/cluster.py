"""Dask client setup: a local cluster of worker processes by default, or an existing scheduler."""

from __future__ import annotations

import os
from contextlib import contextmanager

from analyze.errors import UsageError


@contextmanager
def client_for(
    scheduler: str | None = None, workers: int | None = None, timeout: float = 10.0, verbose: bool = True
):
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise UsageError(
                f"cannot reach the Dask scheduler at {scheduler!r} ({type(err).__name__}): "
                f"check the address (tcp://HOST:PORT) and that the scheduler is running"
            ) from None
        try:
            if verbose:
                print(f"analyze: joined {scheduler}, dashboard {client.dashboard_link}")
            yield client
        finally:
            client.close()
        return
    n = workers or max(1, min(4, os.cpu_count() or 1))
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        if verbose:
            print(f"analyze: local cluster of {n} worker processes, dashboard {client.dashboard_link}")
        yield client
