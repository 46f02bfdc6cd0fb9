"""Golden numbers for the worker's training primitives and sampler, from PyTorch and diffusers.

Run it from the repository root with the project's Python venv (torch 2.11 CPU, diffusers 0.42.1):

    /work/pyvenv/bin/python scripts/golden/make_scheduler_golden.py

It rewrites the small safetensors files under worker/tests/golden_sched/ (a few tens of KB in
all, committed). The Rust tests (worker/tests/sampler.rs, worker/tests/train.rs) only read
those files: CI does not need Python. Rerun this script only when the reference changes (a new
diffusers or torch version); the files it writes are deterministic.

What it records (every tensor float32 unless said otherwise):

* scheduler.safetensors
  - euler.n{N}.shift{S}.timesteps / .sigmas: FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
    shift=S) after set_timesteps(N), for N in (8, 50) and S in (1, 3, 5).
  - unipc.n{N}.shift{S}.timesteps (int64) / .sigmas: UniPCMultistepScheduler as the Wan pipeline
    configures it (prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=S, solver_order=2,
    solver_type="bh2", lower_order_final=True, final_sigmas_type="zero") after set_timesteps(N).
  - traj.x_init, traj.c: the start sample and a fixed tensor of the toy velocity field
    v(x, t) = 0.3 * x - c * (t / 1000), computed in float32 exactly as the Rust test does.
  - traj.{euler,unipc}.n{N}.shift5: [N + 1, ...] the sample before the first step and after every
    step of the scheduler's loop (the Wan pipeline's loop, set_begin_index(0)), for N in (8, 50);
    traj.unipc_order3.n12.shift3 and traj.unipc_bh1.n12.shift3: UniPC with solver_order=3, and
    with solver_type="bh1", beyond Wan's configuration.
* adamw.safetensors: torch.optim.AdamW (single-tensor CPU path, the default on CPU) on three fp32
  parameters for 5 steps; parameter `c` gets no gradient at step 3 (index 2) so its own step
  count lags, as PyTorch does. init.{name}, grad.{step}.{name} (absent when None), final.{name},
  exp_avg.{name}, exp_avg_sq.{name}, step.{name} (float32 scalar as PyTorch keeps it) and
  hyper (lr, beta1, beta2, eps, weight_decay as float64).
* clip.safetensors: torch.nn.utils.clip_grad_norm_ (norm_type 2) on three fp32 gradients, for a
  max_norm below the total (it clips) and above it (it does not): {case}.grad_in.{i},
  {case}.grad_out.{i}, {case}.total_norm, {case}.max_norm (float64).
"""

import os
import sys

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "worker", "tests", "golden_sched")


def euler(shift):
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def unipc(shift, solver_order=2, solver_type="bh2"):
    return UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=solver_order,
        solver_type=solver_type,
        lower_order_final=True,
        final_sigmas_type="zero",
        predict_x0=True,
    )


def toy_velocity(x, t, c):
    # t is the timestep the pipeline hands the transformer: float32 for Euler, int64 for UniPC.
    return x * 0.3 - c * (t.to(torch.float32) / 1000.0)


def trajectory(sched, n, x_init, c):
    sched.set_timesteps(n)
    sched.set_begin_index(0)
    x = x_init.clone()
    out = [x.clone()]
    for t in sched.timesteps:
        v = toy_velocity(x, t, c)
        x = sched.step(v, t, x, return_dict=False)[0]
        out.append(x.clone())
    return torch.stack(out)


def scheduler_golden():
    tensors = {}
    for n in (8, 50):
        for shift in (1, 3, 5):
            s = euler(float(shift))
            s.set_timesteps(n)
            tensors[f"euler.n{n}.shift{shift}.timesteps"] = s.timesteps.to(torch.float32).contiguous()
            tensors[f"euler.n{n}.shift{shift}.sigmas"] = s.sigmas.to(torch.float32).contiguous()
            u = unipc(float(shift))
            u.set_timesteps(n)
            assert u.timesteps.dtype == torch.int64
            tensors[f"unipc.n{n}.shift{shift}.timesteps"] = u.timesteps.contiguous()
            tensors[f"unipc.n{n}.shift{shift}.sigmas"] = u.sigmas.to(torch.float32).contiguous()
    g = torch.Generator().manual_seed(20261127)
    x_init = torch.randn(1, 2, 2, 4, 4, generator=g)
    c = torch.randn(1, 2, 2, 4, 4, generator=g)
    tensors["traj.x_init"] = x_init
    tensors["traj.c"] = c
    for n in (8, 50):
        tensors[f"traj.euler.n{n}.shift5"] = trajectory(euler(5.0), n, x_init, c)
        tensors[f"traj.unipc.n{n}.shift5"] = trajectory(unipc(5.0), n, x_init, c)
    # Beyond Wan's configuration, to exercise the general solver: order 3, and bh1.
    tensors["traj.unipc_order3.n12.shift3"] = trajectory(unipc(3.0, solver_order=3), 12, x_init, c)
    tensors["traj.unipc_bh1.n12.shift3"] = trajectory(unipc(3.0, solver_type="bh1"), 12, x_init, c)
    return tensors


def adamw_golden():
    g = torch.Generator().manual_seed(7)
    shapes = {"a": (4, 3), "b": (5,), "c": (2, 2, 2)}
    params = {k: torch.randn(*s, generator=g) for k, s in shapes.items()}
    lr, beta1, beta2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.1
    tensors = {f"init.{k}": p.clone() for k, p in params.items()}
    leaves = {k: p.clone().requires_grad_(True) for k, p in params.items()}
    opt = torch.optim.AdamW(list(leaves.values()), lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
    for step in range(5):
        for k, p in leaves.items():
            if k == "c" and step == 2:
                p.grad = None
                continue
            grad = torch.randn(*shapes[k], generator=g) * (1.0 + step)
            tensors[f"grad.{step}.{k}"] = grad.clone()
            p.grad = grad
        opt.step()
    for k, p in leaves.items():
        st = opt.state[p]
        tensors[f"final.{k}"] = p.detach().clone()
        tensors[f"exp_avg.{k}"] = st["exp_avg"].clone()
        tensors[f"exp_avg_sq.{k}"] = st["exp_avg_sq"].clone()
        tensors[f"step.{k}"] = st["step"].clone().reshape(())
    tensors["hyper"] = torch.tensor([lr, beta1, beta2, eps, wd], dtype=torch.float64)
    return tensors


def clip_golden():
    g = torch.Generator().manual_seed(11)
    shapes = [(3, 4), (7,), (2, 3, 2)]
    tensors = {}
    for case, max_norm in (("clips", 1.0), ("keeps", 1000.0)):
        grads = [torch.randn(*s, generator=g) * 2.0 for s in shapes]
        leaves = [torch.zeros(*s, requires_grad=True) for s in shapes]
        for i, (leaf, grad) in enumerate(zip(leaves, grads)):
            leaf.grad = grad.clone()
            tensors[f"{case}.grad_in.{i}"] = grad.clone()
        total = torch.nn.utils.clip_grad_norm_(leaves, max_norm, norm_type=2.0)
        for i, leaf in enumerate(leaves):
            tensors[f"{case}.grad_out.{i}"] = leaf.grad.clone()
        tensors[f"{case}.total_norm"] = total.detach().clone().reshape(())
        tensors[f"{case}.max_norm"] = torch.tensor(max_norm, dtype=torch.float64)
    return tensors


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    for name, tensors in (
        ("scheduler", scheduler_golden()),
        ("adamw", adamw_golden()),
        ("clip", clip_golden()),
    ):
        path = os.path.join(OUT, f"{name}.safetensors")
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
        print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)", file=sys.stderr)


if __name__ == "__main__":
    main()
