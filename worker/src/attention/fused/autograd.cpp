// The fused linear part of the hybrid attention as a LibTorch autograd Function. tch has no
// custom autograd functions, so this small shim gives one: its forward and backward call
// back into Rust (fused/autograd.rs), which runs the GEMMs through LibTorch and the
// NVRTC kernels; LibTorch records the node, keeps what the forward saved, and calls the
// backward with the output's gradient wherever the result is used (distillation,
// fine-tuning with or without activation checkpointing, any loss).
//
// Tensors cross the boundary as `at::Tensor*` (tch's C_tensor): borrowed when passed to
// Rust, owned when Rust returns them (Rust allocates them with `new` inside tch's C API;
// we take the value and delete the box).

#include <torch/csrc/autograd/custom_function.h>

#include <cstring>
#include <string>
#include <vector>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

extern "C" {
// Returns 0 on success; on failure writes a NUL-terminated message into err.
typedef int (*surgery_fused_forward_fn)(const double* cfg, int n_cfg, at::Tensor** inputs, int n_inputs,
                                        at::Tensor** output, at::Tensor** saved, int max_saved, int* n_saved,
                                        char* err, int err_len);
typedef int (*surgery_fused_backward_fn)(const double* cfg, int n_cfg, at::Tensor** saved, int n_saved,
                                         at::Tensor* grad_output, at::Tensor** grads, int n_grads, char* err,
                                         int err_len);
}

namespace {

surgery_fused_forward_fn g_forward = nullptr;
surgery_fused_backward_fn g_backward = nullptr;

constexpr int kInputs = 12;
constexpr int kMaxSaved = 32;
constexpr int kErrLen = 4096;

at::Tensor take(at::Tensor* boxed) {
    if (boxed == nullptr) return at::Tensor();
    at::Tensor value = *boxed;
    delete boxed;
    return value;
}

struct HybridLinear : public torch::autograd::Function<HybridLinear> {
    // Inputs: O (anchor output, or an empty tensor at the linear rate), q, k_L, v_L, then
    // phi_q's w1, b1, w2, b2 and phi_k's; cfg: see fused/autograd.rs.
    static variable_list forward(AutogradContext* ctx, at::Tensor o, at::Tensor q, at::Tensor kl, at::Tensor vl,
                                 at::Tensor w1q, at::Tensor b1q, at::Tensor w2q, at::Tensor b2q, at::Tensor w1k,
                                 at::Tensor b1k, at::Tensor w2k, at::Tensor b2k, std::vector<double> cfg) {
        at::Tensor* inputs[kInputs] = {&o, &q, &kl, &vl, &w1q, &b1q, &w2q, &b2q, &w1k, &b1k, &w2k, &b2k};
        at::Tensor* output = nullptr;
        at::Tensor* saved[kMaxSaved] = {nullptr};
        int n_saved = 0;
        char err[kErrLen] = {0};
        if (g_forward == nullptr) throw std::runtime_error("fused hybrid attention: callbacks not registered");
        int rc = g_forward(cfg.data(), (int)cfg.size(), inputs, kInputs, &output, saved, kMaxSaved, &n_saved, err,
                           kErrLen);
        at::Tensor y = take(output);
        std::vector<at::Tensor> keep;
        for (int i = 0; i < n_saved; ++i) keep.push_back(take(saved[i]));
        if (rc != 0) throw std::runtime_error(std::string("fused hybrid attention forward: ") + err);
        ctx->save_for_backward(keep);
        ctx->saved_data["cfg"] = cfg;
        return {y};
    }

    static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
        std::vector<double> cfg = ctx->saved_data["cfg"].toDoubleVector();
        variable_list saved = ctx->get_saved_variables();
        std::vector<at::Tensor*> saved_ptrs;
        for (auto& t : saved) saved_ptrs.push_back(&t);
        at::Tensor grad = grad_outputs[0];
        if (!grad.defined()) {
            return variable_list(kInputs + 1);
        }
        at::Tensor* grads[kInputs] = {nullptr};
        char err[kErrLen] = {0};
        int rc = g_backward(cfg.data(), (int)cfg.size(), saved_ptrs.data(), (int)saved_ptrs.size(), &grad, grads,
                            kInputs, err, kErrLen);
        variable_list out;
        for (int i = 0; i < kInputs; ++i) out.push_back(take(grads[i]));
        if (rc != 0) throw std::runtime_error(std::string("fused hybrid attention backward: ") + err);
        out.push_back(at::Tensor());  // cfg
        return out;
    }
};

}  // namespace

extern "C" {

int surgery_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }

void surgery_fused_register(surgery_fused_forward_fn forward, surgery_fused_backward_fn backward) {
    g_forward = forward;
    g_backward = backward;
}

// Applies the Function; returns the output (owned) or null with the message in err.
at::Tensor* surgery_fused_apply(at::Tensor** inputs, const double* cfg, int n_cfg, char* err, int err_len) {
    try {
        std::vector<double> config(cfg, cfg + n_cfg);
        variable_list out = HybridLinear::apply(*inputs[0], *inputs[1], *inputs[2], *inputs[3], *inputs[4], *inputs[5],
                                                *inputs[6], *inputs[7], *inputs[8], *inputs[9], *inputs[10],
                                                *inputs[11], config);
        return new at::Tensor(out[0]);
    } catch (const std::exception& e) {
        std::strncpy(err, e.what(), err_len - 1);
        err[err_len - 1] = 0;
        return nullptr;
    }
}
}
