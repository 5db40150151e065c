"""Training state on disk: everything needed to resume, loadable without unpickling arbitrary objects."""
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

STATE_FILE = "state.pt"


def rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(folder: Path, method, optimizer, step: int, epoch: int, metrics: dict[str, float],
                        rng_states: Optional[list[dict[str, Any]]] = None) -> None:
    """`rng_states`: every rank's RNG state in rank order (default: this process's only)."""
    torch.save(
        {"method": method.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
         "metrics": metrics, "rng": rng_states or [rng_state()]},
        Path(folder) / STATE_FILE,
    )


def load_training_state(folder: Path, method, optimizer, rank: int = 0) -> dict[str, Any]:
    """Restores method, optimizer and this rank's RNG in place; returns step, epoch (epochs completed),
    metrics and whether the checkpoint held an RNG state for this rank (not when the run grew workers).
    Tensors load on the CPU; `load_state_dict` copies them to wherever the method and optimizer live."""
    state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
    if rank < len(rngs):
        set_rng_state(rngs[rank])
    return {"step": state["step"], "epoch": state["epoch"], "metrics": state["metrics"],
            "rng_restored": rank < len(rngs)}


@contextmanager
def worker_checkpoint_folder(checkpoint) -> Iterator[Optional[str]]:
    """A Ray Train checkpoint's folder for this worker alone (None without a checkpoint): where it is (local
    storage), else downloaded into a folder of its own and removed after. Ray's `as_directory` shares one
    download folder between the workers of a node, and a worker that arrives after another has downloaded
    downloads again into the folder the first is reading (or the first removes it under the second): CI saw a
    restarted worker read a truncated state file (EOFError) after a node was lost, its two workers on one node."""
    import pyarrow.fs

    if checkpoint is None or isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield checkpoint and checkpoint.path
        return
    folder = tempfile.mkdtemp(prefix="checkpoint_")
    try:
        yield checkpoint.to_directory(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
