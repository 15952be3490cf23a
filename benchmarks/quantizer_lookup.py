"""Nearest-code lookup: throughput and peak memory of `hf_vitvq.quantizer_vq.nearest_code` against a naive broadcast
implementation and vector-quantize-pytorch's `VectorQuantize` (when installed), at K in {1024, 8192, 65536} codes,
D in {12, 256} dimensions, N = 32768 vectors.

Each (implementation, K, D) case runs in its own subprocess so that its peak RSS is its own. Cases that would need
more memory than `--memory_limit_gb` are shrunk (naive: fewer vectors, throughput per vector still comparable) or
skipped (vector-quantize-pytorch, whose memory is the point). Indices of every implementation are checked against
ours on the same vectors.

    python benchmarks/quantizer_lookup.py                 # the whole table (a few minutes on 2 cores)
    python benchmarks/quantizer_lookup.py --codebook_sizes 1024 --dims 12
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

IMPLEMENTATIONS = ("ours", "naive", "vector-quantize-pytorch")


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def naive_nearest_code(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The textbook broadcast: builds the (N, K, D) difference tensor."""
    return ((vectors[:, None, :] - codebook[None, :, :]) ** 2).sum(dim=-1).argmin(dim=1)


def make_lookup(implementation: str, codebook: torch.Tensor):
    """A function (N, D) vectors -> (N,) indices for the implementation, using `codebook`."""
    if implementation == "ours":
        from hf_vitvq.quantizer_vq import nearest_code

        return lambda vectors: nearest_code(vectors, codebook)
    if implementation == "naive":
        return lambda vectors: naive_nearest_code(vectors, codebook)
    from vector_quantize_pytorch import VectorQuantize

    size, dim = codebook.shape
    quantizer = VectorQuantize(dim=dim, codebook_size=size).eval()
    with torch.no_grad():
        quantizer._codebook.embed.copy_(codebook[None])
        quantizer._codebook.initted.fill_(True)

    def lookup(vectors: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return quantizer(vectors[None])[1][0]

    return lookup


def run_case(implementation: str, size: int, dim: int, num_vectors: int, repeats: int) -> dict:
    """Time one case in this process; returns throughput, peak RSS and an index checksum against ours."""
    generator = torch.Generator().manual_seed(0)
    codebook = torch.randn(size, dim, generator=generator)
    vectors = torch.randn(num_vectors, dim, generator=generator)
    lookup = make_lookup(implementation, codebook)
    from hf_vitvq.quantizer_vq import nearest_code

    reference = nearest_code(vectors, codebook)
    baseline_mb = rss_mb()
    times, indices = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        indices = lookup(vectors)
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "vectors_per_s": num_vectors / min(times),
        "peak_rss_mb": peak_mb,
        "baseline_rss_mb": baseline_mb,
        "num_vectors": num_vectors,
        "mismatches": int((indices != reference).sum()),
    }


def plan(implementation: str, size: int, dim: int, num_vectors: int, limit_bytes: float) -> tuple[int, str]:
    """How many vectors a case can use within the memory limit, and a note when that is fewer than asked."""
    if implementation == "naive":
        per_vector = size * dim * 4 * 2  # the (n, K, D) differences and their squares
        fits = int(limit_bytes // per_vector)
        if fits < num_vectors:
            need = per_vector * num_vectors / 2**30
            return max(fits, 1), f"on {max(fits, 1)} vectors; all {num_vectors} would need {need:.0f} GiB"
    if implementation == "vector-quantize-pytorch":
        need = size * num_vectors * 4 * 3  # the (N, K) distance matrix and its temporaries
        if need > limit_bytes:
            return 0, f"skipped: materialises the {num_vectors} x {size} distance matrix (~{need / 2**30:.0f} GiB)"
    return num_vectors, ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codebook_sizes", type=int, nargs="+", default=[1024, 8192, 65536])
    parser.add_argument("--dims", type=int, nargs="+", default=[12, 256])
    parser.add_argument("--num_vectors", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=2, help="timed lookups per subprocess (best one counts)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved subprocess rounds per case (best counts)")
    parser.add_argument("--memory_limit_gb", type=float, default=8.0)
    parser.add_argument("--case", nargs=3, metavar=("IMPL", "K", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        implementation, size, dim = args.case[0], int(args.case[1]), int(args.case[2])
        print(json.dumps(run_case(implementation, size, dim, args.num_vectors, args.repeats)))
        return

    try:
        import vector_quantize_pytorch  # noqa: F401

        implementations = IMPLEMENTATIONS
    except ImportError:
        implementations = IMPLEMENTATIONS[:2]
        print("vector-quantize-pytorch is not installed: comparing with the naive implementation only.\n")
    print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; N = {args.num_vectors}, best of {args.rounds} x {args.repeats}.\n")  # fmt: skip
    print("| K | D | implementation | vectors/s | peak RSS (MiB) | RSS before lookup (MiB) | index mismatches | note |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.codebook_sizes:
        for dim in args.dims:
            best: dict[str, dict] = {}
            for _ in range(args.rounds):  # interleaved, so that load from other processes hits every implementation
                for implementation in implementations:
                    case = measure(implementation, size, dim, args)
                    if implementation not in best or case.get("vectors_per_s", 0) > best[implementation].get(
                        "vectors_per_s", 0
                    ):
                        best[implementation] = case
            for implementation in implementations:
                print(format_row(size, dim, implementation, best[implementation]), flush=True)


def measure(implementation: str, size: int, dim: int, args: argparse.Namespace) -> dict:
    """One case in a fresh subprocess; a dict with a `note` (and no numbers) when skipped or failed."""
    num_vectors, note = plan(implementation, size, dim, args.num_vectors, args.memory_limit_gb * 2**30)
    if not num_vectors:
        return {"note": note}
    command = [sys.executable, __file__, "--case", implementation, str(size), str(dim),
               "--num_vectors", str(num_vectors), "--repeats", str(args.repeats)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        error = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "killed"
        return {"note": f"failed ({error})"}
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "note": note}


def format_row(size: int, dim: int, implementation: str, case: dict) -> str:
    if "vectors_per_s" not in case:
        return f"| {size} | {dim} | {implementation} | - | - | - | - | {case['note']} |"
    return (
        f"| {size} | {dim} | {implementation} | {case['vectors_per_s']:,.0f} | {case['peak_rss_mb']:,.0f} "
        f"| {case['baseline_rss_mb']:,.0f} | {case['mismatches']} | {case['note']} |"
    )


if __name__ == "__main__":
    main()
