"""Ranks of a torch.distributed launch inside a test (gloo, a file store): `launch(size, worker, *args)` runs
`worker(rank, *args)` in `size` spawned processes and returns what each returned, or each one's error."""

from __future__ import annotations

import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, size: int, store: str, results: dict, worker, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=120))
    try:
        results[rank] = ("ok", worker(rank, *args))
    except BaseException as err:  # noqa: BLE001 (reported to the test)
        results[rank] = ("error", f"{type(err).__name__}: {err}", traceback.format_exc())
    finally:
        dist.destroy_process_group()


def launch(size: int, worker, *args: object) -> list[tuple]:
    """Run `worker(rank, *args)` on `size` gloo ranks; per rank ("ok", value) or ("error", message, traceback)."""
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_entry, args=(size, str(Path(tmp) / "store"), results, worker, args), nprocs=size, join=True)
        return [results[rank] for rank in range(size)]


def kill_after_chunks(chunks: int) -> None:
    """Kill this rank (a RuntimeError) when it starts lesion chunk `chunks` + 1: a rank that dies mid-run."""
    import resetassay.pipeline.shard

    real, done = resetassay.pipeline.shard.lesion_chunk, []

    def crashing(*args, **kwargs):
        if len(done) == chunks:
            raise RuntimeError("rank 1 killed")
        done.append(1)
        return real(*args, **kwargs)

    resetassay.pipeline.shard.lesion_chunk = crashing
