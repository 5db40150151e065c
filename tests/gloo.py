"""Two real worker processes joined by a gloo process group, for tests of cross-worker collectives."""
import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, port: int, body, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results[rank] = body(rank)
    finally:
        dist.destroy_process_group()


def run_on_two_workers(body) -> dict:
    """{rank: body(rank)} for ranks 0 and 1; `body` must be a module-level function."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_free_port(), body, results), nprocs=2)
        return dict(results)
