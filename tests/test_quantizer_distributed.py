"""Codebooks stay identical across processes: EMA statistics, k-means initialisation, dead-code restarts and usage
counts are synchronised. Two CPU processes (gloo) on a fixed port of our own (29517)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_config_kwargs

from hf_vitvq import ViTVQConfig
from hf_vitvq.quantizer_vq import build_vector_quantizer

PORT = 29517
WORLD_SIZE, STEPS, BATCH, DIM = 2, 3, 2, 2

EMA = tiny_config_kwargs(
    codebook_size=6, codebook_dim=DIM, use_l2_norm_codes=False, use_ema_codebook=True, ema_decay=0.8
)
MAINTAINED = tiny_config_kwargs(
    codebook_size=16, codebook_dim=DIM, use_l2_norm_codes=False, kmeans_init=True, dead_code_steps=1
)


def run_rank(rank: int, folder: str) -> None:
    """One process of the group: run every config on this rank's batches and save the resulting state."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{PORT}", rank=rank, world_size=WORLD_SIZE)
    inputs = torch.load(f"{folder}/inputs.pt")
    for name, kwargs in inputs["configs"].items():
        torch.manual_seed(0)
        quantizer = build_vector_quantizer(ViTVQConfig(**kwargs)).train()
        quantizer.init_weights()
        torch.manual_seed(100 + rank)  # different random draws per rank: only rank 0's may count
        for batch in inputs["data"][rank]:
            quantizer(batch)
        state = {**dict(quantizer.named_buffers()), "embedding.weight": quantizer.embedding.weight.detach()}
        torch.save(state, f"{folder}/{name}_rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def run_group(folder: str, timeout: float = 60.0) -> None:
    """Fork two ranks (they inherit the imported libraries, saving seconds of start-up) and wait for both."""
    context = mp.start_processes(run_rank, args=(folder,), nprocs=WORLD_SIZE, join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {WORLD_SIZE} ranks did not finish within {timeout} s")


def test_two_processes_keep_identical_codebooks(tmp_path):
    torch.manual_seed(0)
    data = torch.randn(WORLD_SIZE, STEPS, BATCH, 8, DIM) * 3  # (rank, step, B, L, D): each rank its own batches
    torch.save({"configs": {"ema": EMA, "maintained": MAINTAINED}, "data": data}, tmp_path / "inputs.pt")
    run_group(str(tmp_path))
    states = {name: [torch.load(tmp_path / f"{name}_rank{r}.pt") for r in range(2)] for name in ("ema", "maintained")}
    for name, (rank0, rank1) in states.items():
        assert rank0.keys() == rank1.keys()
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), f"{name}: {key} differs between ranks"

    # EMA on two halves equals EMA on the whole batch in one process
    torch.manual_seed(0)
    reference = build_vector_quantizer(ViTVQConfig(**EMA)).train()
    reference.init_weights()
    for step in range(STEPS):
        reference(torch.cat([data[0, step], data[1, step]]))
    ema = states["ema"][0]
    torch.testing.assert_close(ema["embedding.weight"], reference.embedding.weight)
    torch.testing.assert_close(ema["cluster_size"], reference.cluster_size)
    torch.testing.assert_close(ema["usage.frequency"], reference.usage.frequency)

    # k-means ran once; the restart before the last lookup re-seeded codes from rank 0's batch only
    maintained = states["maintained"][0]
    assert bool(maintained["kmeans_done"]) and int(maintained["usage.step"]) == STEPS
    codes = maintained["embedding.weight"]
    from_rank = [(codes[:, None, :] == data[r, -1].reshape(-1, DIM)[None]).all(-1).any(-1) for r in range(2)]
    assert from_rank[0].sum() >= 1 and not from_rank[1].any()
