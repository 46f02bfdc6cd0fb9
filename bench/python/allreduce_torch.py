"""All-reduce with torch.distributed (NCCL): the baseline for bench/src/bin/allreduce-bench.rs.

Same cases, sizes and JSON fields as the Rust benchmark, one process per GPU started with
torch.multiprocessing (no torchrun), rendezvous over a local TCP port:

  flat-f32-1GiB                one 1 GiB f32 tensor, one all_reduce;
  wan1.3b-grads-bf16-flat      the 825 Wan2.1 1.3B gradients in bf16 (2.84 GB) as views
                               into one flat buffer: one all_reduce over the buffer (DDP's
                               gradient_as_bucket_view with a single bucket, torch's best);
  wan1.3b-grads-bf16-separate  the same gradients allocated one by one, reduced the way
                               DDP's reducer does: 25 MiB buckets flattened with torch.cat,
                               all_reduce, copied back with torch._foreach_copy_.

Each case is checked once (rank r fills r + 1; every element must become w (w + 1) / 2),
then timed over --iters back-to-back iterations between two cuda synchronizations. Rank 0
prints time, algbw = bytes / time and busbw = algbw * 2 (w - 1) / w (nccl-tests).

Run on the GPU machine:  python3 bench/python/allreduce_torch.py [--world 2] [--iters 20]
"""
import argparse
import json
import os
import socket
import time

# NVLink multicast stays off on the lent machines (GPU.md); before torch reads them.
for key, value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(key, value)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

CASES = "flat-f32-1GiB,wan1.3b-grads-bf16-flat,wan1.3b-grads-bf16-separate"
DDP_BUCKET_BYTES = 25 << 20


def wan13b_shapes():
    """Parameter shapes of Wan2.1 1.3B (diffusers WanTransformer3DModel, T2V): 825 tensors,
    1,418,996,800 elements. The same list as wan13b_shapes() in allreduce-bench.rs."""
    d, ffn, text, freq, out = 1536, 8960, 4096, 256, 64
    s = [[d, 16, 1, 2, 2], [d]]
    for o, i in ((d, freq), (d, d), (6 * d, d), (d, text), (d, d)):
        s += [[o, i], [o]]
    for _ in range(30):
        for _attn in range(2):
            for _proj in range(4):
                s += [[d, d], [d]]
            s += [[d], [d]]  # norm_q, norm_k
        s += [[d], [d]]  # norm2 weight, bias
        s += [[ffn, d], [ffn], [d, ffn], [d]]
        s += [[1, 6, d]]  # scale_shift_table
    s += [[out, d], [out], [1, 2, d]]
    return s


def numel(shape):
    n = 1
    for x in shape:
        n *= x
    return n


def make_case(name, device):
    """Returns (tensors, check, op, dtype): `op()` reduces `tensors` once."""
    if name == "flat-f32-1GiB":
        t = torch.zeros(1 << 28, dtype=torch.float32, device=device)
        return [t], [t], lambda: dist.all_reduce(t), "f32"
    shapes = wan13b_shapes()
    if name == "wan1.3b-grads-bf16-flat":
        flat = torch.zeros(sum(numel(s) for s in shapes), dtype=torch.bfloat16, device=device)
        views, offset = [], 0
        for s in shapes:
            views.append(flat[offset:offset + numel(s)].view(s))
            offset += numel(s)
        return views, [flat], lambda: dist.all_reduce(flat), "bf16"
    if name == "wan1.3b-grads-bf16-separate":
        tensors = [torch.zeros(s, dtype=torch.bfloat16, device=device) for s in shapes]
        buckets, current, size = [], [], 0
        for t in tensors:
            nbytes = t.numel() * t.element_size()
            if current and size + nbytes > DDP_BUCKET_BYTES:
                buckets.append(current)
                current, size = [], 0
            current.append(t)
            size += nbytes
        if current:
            buckets.append(current)

        def op():
            for bucket in buckets:
                flat = torch.cat([t.reshape(-1) for t in bucket])
                dist.all_reduce(flat)
                pieces = torch.split(flat, [t.numel() for t in bucket])
                torch._foreach_copy_(bucket, [p.view_as(t) for p, t in zip(pieces, bucket)])

        return tensors, tensors, op, "bf16"
    raise SystemExit(f"unknown case {name!r}")


def run(rank, world, port, args):
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, device_id=device
    )
    expected = world * (world + 1) / 2
    for name in [c for c in args.cases.split(",") if c]:
        tensors, check, op, dtype = make_case(name, device)
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        for t in check:
            t.fill_(rank + 1)
        op()
        torch.cuda.synchronize()
        for t in check:
            worst = (t.float() - expected).abs().max().item()
            if worst != 0:
                raise SystemExit(f"{name}: an element differs from {expected} by {worst}")
            t.zero_()
        for _ in range(args.warmup):
            op()
        torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        for _ in range(args.iters):
            op()
        torch.cuda.synchronize()
        secs = (time.perf_counter() - start) / max(args.iters, 1)
        algbw = nbytes / secs / 1e9
        if rank == 0:
            print(json.dumps({
                "bench": "allreduce",
                "impl": "torch-nccl",
                "case": name,
                "world": world,
                "dtype": dtype,
                "tensors": len(tensors),
                "bytes": nbytes,
                "iters": args.iters,
                "time_ms": secs * 1e3,
                "algbw_gbps": algbw,
                "busbw_gbps": algbw * 2 * (world - 1) / world,
                "device": torch.cuda.get_device_name(device),
                "nccl": "torch " + torch.__version__ + " nccl " + ".".join(map(str, torch.cuda.nccl.version())),
            }), flush=True)
        del tensors, check, op
        torch.cuda.empty_cache()
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=torch.cuda.device_count())
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cases", default=CASES)
    args = parser.parse_args()
    if args.world < 1:
        raise SystemExit("no CUDA device")
    mp.spawn(run, args=(args.world, free_port(), args), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
