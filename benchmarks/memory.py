"""Peak resident memory of this process and of the Ray workers on this machine, for benchmark children."""
import resource
from pathlib import Path


def own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ray_worker_peak_mb() -> float:
    """The largest VmHWM among processes named `ray::...` (this machine's Ray workers and actors)."""
    peaks = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::"):
                peaks.append(int((entry / "status").read_text().split("VmHWM:")[1].split()[0]) / 1024)
        except (OSError, IndexError):
            continue
    return max(peaks, default=0.0)
