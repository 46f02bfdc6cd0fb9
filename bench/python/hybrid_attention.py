"""Hybrid attention in PyTorch eager: the baseline for the tch implementation.

The formula of METHOD.md section 1 in its normalised-anchor form with the revised
normaliser (c_i = LSE over the anchors - log |T_S|, so the anchors weigh |T_S|), written the way
../shared/GPU.md measured it: anchors as strided views into SDPA (default backend),
linear tokens by index_select on a precomputed index, phi as one batched matmul over
heads, S, z and the numerator/denominator accumulated in fp32. The feature map is the
one worker/src/attention/feature_map.rs implements (per-head 2-layer MLP, GELU between,
P = 2 chunks: softplus(chunk 1), chunk 2 squared).

Modes, as in the issue: forward; fine-tune forward+backward (grads to q, k, v and phi);
distillation (q, k, v frozen, SDPA without grad, L1 to the teacher output, grads to phi).

Run on the GPU machine:  python3 bench/python/hybrid_attention.py
Prints one line per (mode, rate) with the median milliseconds, then the same as JSON lines.
"""
import argparse
import json

import torch
import torch.nn.functional as F


def median_ms(fn, warmup=5, iters=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


class FeatureMap(torch.nn.Module):
    def __init__(self, heads, d, hidden, features, device, dtype):
        super().__init__()
        g = lambda *s: torch.nn.Parameter(torch.randn(*s, device=device, dtype=dtype) * s[-2] ** -0.5)
        self.w1 = g(heads, d, hidden)
        self.b1 = torch.nn.Parameter(torch.zeros(heads, hidden, device=device, dtype=dtype))
        self.w2 = g(heads, hidden, features)
        self.b2 = torch.nn.Parameter(torch.zeros(heads, features, device=device, dtype=dtype))

    def forward(self, x):  # [B, H, N, d] -> [B, H, N, D']
        h = F.gelu(torch.matmul(x, self.w1) + self.b1[:, None, :])
        o = torch.matmul(h, self.w2) + self.b2[:, None, :]
        c1, c2 = o.chunk(2, dim=-1)
        return torch.cat([F.softplus(c1), c2 * c2], dim=-1)


def hybrid(q, k, v, rate, linear_index, phi_q, phi_k, eps=1e-6, anchors_grad=True):
    if rate is None:  # linear: no anchors
        out_anchor = None
    elif anchors_grad:
        out_anchor = F.scaled_dot_product_attention(q, k[:, :, ::rate], v[:, :, ::rate])
    else:
        with torch.no_grad():
            out_anchor = F.scaled_dot_product_attention(q, k[:, :, ::rate], v[:, :, ::rate])
    k_lin = k.index_select(2, linear_index)
    v_lin = v.index_select(2, linear_index)
    fk = phi_k(k_lin).float()
    fq = phi_q(q).float()
    state = torch.matmul(fk.transpose(-1, -2), v_lin.float())  # [B, H, D', d]
    norm = fk.sum(dim=2)  # [B, H, D']
    num = torch.matmul(fq, state)
    den = (fq * norm[:, :, None, :]).sum(-1, keepdim=True) + eps
    if out_anchor is not None:
        a = float(-(-q.shape[2] // rate))  # |T_S| = ceil(N / R)
        num = num + a * out_anchor.float()
        den = den + a
    return (num / den).to(q.dtype)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=32760)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--features", type=int, default=256)
    args = p.parse_args()
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    shape = (1, args.heads, args.tokens, args.head_dim)
    q, k, v = (torch.randn(shape, device=dev, dtype=dt) for _ in range(3))
    grad_out = torch.randn(shape, device=dev, dtype=dt)
    phi_q = FeatureMap(args.heads, args.head_dim, args.hidden, args.features, dev, dt)
    phi_k = FeatureMap(args.heads, args.head_dim, args.hidden, args.features, dev, dt)
    results = {}

    def sdpa_fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v)

    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

    def sdpa_fwd_bwd():
        F.scaled_dot_product_attention(qg, kg, vg).backward(grad_out)

    results["softmax"] = {"forward": median_ms(sdpa_fwd), "finetune": median_ms(sdpa_fwd_bwd)}
    with torch.no_grad():
        target = F.scaled_dot_product_attention(q, k, v)
    print(f"# softmax  forward {results['softmax']['forward']:.2f} ms  fwd+bwd {results['softmax']['finetune']:.2f} ms")

    for rate in [2, 4, 8, 16, 32, None]:
        n = args.tokens
        index = torch.arange(n, device=dev)
        linear_index = index if rate is None else index[index % rate != 0]

        def fwd():
            with torch.no_grad():
                hybrid(q, k, v, rate, linear_index, phi_q, phi_k)

        def finetune():
            hybrid(qg, kg, vg, rate, linear_index, phi_q, phi_k).backward(grad_out)

        def distill():
            out = hybrid(q, k, v, rate, linear_index, phi_q, phi_k, anchors_grad=False)
            (out.float() - target.float()).abs().mean().backward()

        name = "linear" if rate is None else f"R{rate}"
        results[name] = {"forward": median_ms(fwd), "finetune": median_ms(finetune), "distill": median_ms(distill)}
        r = results[name]
        print(
            f"# {name:7}  forward {r['forward']:.2f} ms  fine-tune {r['finetune']:.2f} ms  distill {r['distill']:.2f} ms"
        )
    for name, r in results.items():
        print(json.dumps({"phase": "torch-attention", "tokens": args.tokens, "rate": name, **{k + "_ms": v for k, v in r.items()}}))


if __name__ == "__main__":
    main()
