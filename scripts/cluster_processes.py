"""The processes of one scripts/cluster.sh cluster, found and stopped.

    python scripts/cluster_processes.py list RAY_TMP RAY_PORT [PID ...]   their pids and listening sockets, as JSON
    python scripts/cluster_processes.py stop RAY_TMP RAY_PORT [PID ...]   SIGTERM, then SIGKILL after a grace period

A process of the cluster names its Ray folder (RAY_TMP) or its head's port (host:RAY_PORT) on its command line
(the GCS, the raylets, the dashboard, the autoscaler's monitor, Ray's client server, the workers), is one of the
PIDs given (the MLflow and S3 servers), or runs under one of those (the dashboard and runtime-env agents, whose
process titles name neither). Not `ray stop`, which stops every Ray instance on the machine.
"""
import json
import sys
import time

import psutil

GRACE_SECONDS = 5


def names_the_cluster(command: list[str], ray_tmp: str, port: str) -> bool:
    return any(f"{ray_tmp}/" in part or part.endswith((ray_tmp, f":{port}")) for part in command)


def cluster_processes(ray_tmp: str, port: str, pids: list[int]) -> list[psutil.Process]:
    roots = [process for process in psutil.process_iter(["cmdline"])
             if process.pid in pids or names_the_cluster(process.info["cmdline"] or [], ray_tmp, port)]
    found = {}
    for root in roots:
        try:
            for process in [root, *root.children(recursive=True)]:
                found[process.pid] = process
        except psutil.NoSuchProcess:
            continue
    return [process for pid, process in sorted(found.items()) if pid != psutil.Process().pid and running(process)]


def running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE  # a zombie holds no socket; its parent reaps it, or init
    except psutil.NoSuchProcess:
        return False


def listening(processes: list[psutil.Process]) -> list[dict]:
    pids = {process.pid for process in processes}
    return [{"pid": connection.pid, "address": connection.laddr.ip, "port": connection.laddr.port}
            for connection in psutil.net_connections(kind="inet")
            if connection.status == psutil.CONN_LISTEN and connection.pid in pids]


def stop(processes: list[psutil.Process]) -> list[int]:
    """SIGTERM to every process at once, SIGKILL to those still running after the grace period; the pids left."""
    for signal_of, grace in (("terminate", GRACE_SECONDS), ("kill", 5)):
        for process in processes:
            try:
                getattr(process, signal_of)()
            except psutil.NoSuchProcess:
                pass
        deadline = time.time() + grace
        while (processes := [process for process in processes if running(process)]) and time.time() < deadline:
            time.sleep(0.2)
    return [process.pid for process in processes]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("list", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    action, ray_tmp, port, pids = argv[0], argv[1], argv[2], [int(pid) for pid in argv[3:] if pid]
    processes = cluster_processes(ray_tmp, port, pids)
    if action == "list":
        print(json.dumps({"pids": [process.pid for process in processes], "listening": listening(processes)}))
        return 0
    left = stop(processes)
    if left:
        print(f"processes still running after SIGKILL: {left}", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
