//! Block-wise activation checkpointing for the Wan transformer: the forward pass keeps
//! only each block's input hidden state ([B, N, dim], about 100 MB per block at 480p in
//! bf16) instead of every intermediate, and the backward pass recomputes one block at a
//! time from its saved input. This is what lets the 1.3B student fine-tune at 480p on one
//! 80 GB GPU (without it the graph alone runs out of memory, ../shared/GPU.md).
//!
//! tch has no `torch.utils.checkpoint`, so the backward is driven by hand: the embedding
//! outputs become leaf tensors the blocks and the head accumulate gradients into; the head
//! is differentiated first, then each block from last to first (the gradient of a block's
//! output is injected as `sum(output * grad)`, whose derivative is exactly `grad`); at the
//! end the leaves' gradients are pushed through the embedding graph in one pass. Parameter
//! gradients accumulate into `.grad()` as a plain backward would; the caller zeroes them.

use crate::model::{Embedded, WanTransformer};
use tch::{Kind, Tensor};

/// A leaf that stands in for `t` in the blocks and collects their gradient.
fn leaf(t: &Tensor) -> Tensor {
    t.detach().set_requires_grad(t.requires_grad())
}

/// `sum(x * g)` in fp32: back-propagating it sends exactly `g` into `x`'s graph.
fn inject(x: &Tensor, g: &Tensor) -> Tensor {
    (x * g).sum(Kind::Float)
}

/// Forward and backward through `model` with one block's activations alive at a time.
/// `loss_of` maps the model output ([B, C, F, H, W]) to a scalar loss; returns it,
/// detached. Gradients accumulate into every parameter that requires grad (including a
/// hybrid block's feature maps) exactly as `loss_of(model.forward(..)).backward()` would.
pub fn forward_backward(
    model: &WanTransformer,
    latents: &Tensor,
    timestep: &Tensor,
    text: &Tensor,
    loss_of: impl FnOnce(&Tensor) -> Tensor,
) -> Tensor {
    let embedded = model.embed(latents, timestep, text);
    let leaves = Embedded {
        hidden: leaf(&embedded.hidden),
        temb: leaf(&embedded.temb),
        timestep_proj: leaf(&embedded.timestep_proj),
        text: leaf(&embedded.text),
        rope: embedded.rope.shallow_clone(),
        grid: embedded.grid,
    };

    // Forward: keep only block inputs.
    let blocks = model.num_blocks();
    let mut inputs = Vec::with_capacity(blocks);
    let mut hidden = leaves.hidden.detach();
    tch::no_grad(|| {
        for i in 0..blocks {
            let next = model.block_forward(i, &hidden, &leaves);
            inputs.push(std::mem::replace(&mut hidden, next));
        }
    });

    // The head, with its graph.
    let last = hidden.set_requires_grad(true);
    let loss = loss_of(&model.head(&last, &leaves));
    loss.backward();
    let mut grad = last.grad();

    // Blocks, last to first, each recomputed from its saved input.
    for (i, input) in inputs.into_iter().enumerate().rev() {
        let input = input.set_requires_grad(true);
        let output = model.block_forward(i, &input, &leaves);
        inject(&output, &grad).backward();
        grad = input.grad();
    }

    // Through the embeddings, once, with every leaf's accumulated gradient.
    let mut through_embeddings: Option<Tensor> = None;
    for (original, stand_in) in [
        (&embedded.hidden, None),
        (&embedded.temb, Some(&leaves.temb)),
        (&embedded.timestep_proj, Some(&leaves.timestep_proj)),
        (&embedded.text, Some(&leaves.text)),
    ] {
        if !original.requires_grad() {
            continue;
        }
        let g = match stand_in {
            None => grad.shallow_clone(),
            Some(leaf) => {
                let g = leaf.grad();
                if !g.defined() {
                    continue;
                }
                g
            }
        };
        let term = inject(original, &g);
        through_embeddings = Some(match through_embeddings {
            None => term,
            Some(sum) => sum + term,
        });
    }
    if let Some(total) = through_embeddings {
        total.backward();
    }
    loss.detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{WanConfig, WanTransformer};
    use tch::nn::VarStore;
    use tch::{Device, Kind, Tensor};

    fn tiny() -> WanConfig {
        WanConfig {
            in_channels: 4,
            out_channels: 4,
            num_layers: 3,
            ..WanConfig::toy()
        }
    }

    fn grads(vs: &VarStore) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(name, var)| (name, var.grad().copy()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Checkpointed forward+backward gives the loss and every parameter gradient of the
    /// plain one (same ops, same order: equal up to fp32 reassociation in the injection).
    #[test]
    fn matches_a_plain_backward() {
        crate::runtime::init();
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let model = WanTransformer::new(&vs.root(), &tiny());
        let latents = Tensor::randn([2, 4, 2, 4, 6], (Kind::Float, Device::Cpu));
        let timestep = Tensor::from_slice(&[900f32, 100.0]);
        let text = Tensor::randn([2, 5, 16], (Kind::Float, Device::Cpu));
        let target = Tensor::randn([2, 4, 2, 4, 6], (Kind::Float, Device::Cpu));
        let loss_of = |out: &Tensor| (out - &target).square().mean(Kind::Float);

        let plain = loss_of(&model.forward(&latents, &timestep, &text));
        plain.backward();
        let plain_grads = grads(&vs);
        for (_, var) in vs.variables() {
            let _ = var.grad().zero_();
        }

        let checkpointed = forward_backward(&model, &latents, &timestep, &text, loss_of);
        assert_eq!(plain.double_value(&[]), checkpointed.double_value(&[]));
        let check_grads = grads(&vs);
        assert_eq!(plain_grads.len(), check_grads.len());
        for ((name, a), (_, b)) in plain_grads.iter().zip(&check_grads) {
            assert!(a.defined() && b.defined(), "{name} has no gradient");
            let scale = a.abs().max().double_value(&[]).max(1e-12);
            let diff = (a - b).abs().max().double_value(&[]) / scale;
            assert!(
                diff < 1e-5,
                "{name}: checkpointed gradient differs by {diff:.2e} (relative)"
            );
        }
        // Every parameter of the model received a gradient.
        assert!(
            check_grads
                .iter()
                .all(|(_, g)| g.abs().sum(Kind::Float).double_value(&[]) > 0.0)
        );
    }
}
