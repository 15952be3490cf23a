"""Memory of DataLoader worker processes: batch buffers in shared memory that the workers reuse, and a worker start
that stops the garbage collector from walking the objects the worker inherited.

Both remove costs that the decode limit does not have (measured on 2 cores, `benchmarks/data_throughput.py`): the
DataLoader copies each float32 batch a worker returns into a fresh shared-memory segment, and writing fresh pages
costs a page fault per 4 KiB (0.55-0.7 ms per 256x256 image, a third of decoding and resizing a 427x320 JPEG); and a
forked worker holds the training process's ~420k Python objects, which each full collection walks (about 0.2 s).
"""

from __future__ import annotations

import gc
import weakref

import torch


def freeze_inherited_objects(worker_id: int) -> None:
    """A DataLoader `worker_init_fn`: move every object the worker inherited from the training process to the
    collector's permanent generation (`gc.freeze`), so that collections walk only the worker's own objects (and do
    not write to the inherited pages, which stay shared with the training process)."""
    gc.freeze()


class SharedBatchBuffers:
    """Batch tensors in shared memory, a few per DataLoader worker, that a worker writes its batches into again once
    the training process has let go of them.

    A worker takes a free buffer (`take`) and marks it in use in a table both processes share; the training process
    marks it free again when the storage of the batch it received is garbage-collected (`release_when_collected`),
    so a batch is never overwritten while anything still refers to it. A worker whose buffers are all in use gets a
    new tensor, which the DataLoader moves to shared memory as usual: it never waits. Make one per DataLoader, before
    its workers start, so that they share the table. The cost: each worker keeps up to `buffers_per_worker` batches
    in shared memory (`/dev/shm`) while the DataLoader lives, where it alone would have `prefetch_factor` in flight.

    Args:
        num_workers: the DataLoader's worker processes.
        buffers_per_worker: at most this many buffers per worker (a DataLoader has `prefetch_factor` batches of each
            worker in flight, and the training process holds one or two more).
    """

    def __init__(self, num_workers: int, buffers_per_worker: int) -> None:
        if num_workers < 1 or buffers_per_worker < 1:
            raise ValueError(
                f"SharedBatchBuffers needs at least one worker and one buffer per worker, got num_workers={num_workers}"
                f" and buffers_per_worker={buffers_per_worker}."
            )
        self.in_use = torch.zeros(num_workers, buffers_per_worker, dtype=torch.bool).share_memory_()
        self._buffers: list[torch.Tensor | None] = [None] * buffers_per_worker  # in each worker: its own buffers

    def take(self, worker: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, int | None]:
        """(float32 tensor of `shape`, its buffer index) for `worker` to write a batch into (in the worker): a free
        buffer of that worker, now marked in use, else a new tensor and None."""
        for index, in_use in enumerate(self.in_use[worker].tolist()):
            if in_use:
                continue
            buffer = self._buffers[index]
            if buffer is None or buffer.shape != shape:
                buffer = self._buffers[index] = torch.empty(shape).share_memory_()
            self.in_use[worker, index] = True
            return buffer, index
        return torch.empty(shape), None

    def release_when_collected(self, tensor: torch.Tensor, worker: int, index: int | None) -> None:
        """Mark buffer `index` of `worker` free once `tensor`'s storage (the batch received from it; views keep it
        alive) is garbage-collected (in the training process). Nothing for a tensor from no buffer (`index` None)."""
        if index is not None:
            finalizer = weakref.finalize(tensor.untyped_storage(), self.in_use.__setitem__, (worker, index), False)
            finalizer.atexit = False
