// Fused instance normalisation, per-sample affine map, optional residual add and leaky ReLU.
//
//   y = act(scale[b, c] * (x - mean[b, c]) * rstd[b, c] + shift[b, c] (+ residual))
//
// with mean and rstd = 1 / sqrt(var + eps) over the H x W plane of each sample and channel
// (biased variance, as instance norm). act is leaky ReLU with slope `slope`, or the identity.
// One pass reads x for the statistics, one pass writes y. The backward pass reads the output
// gradient, x and y twice (statistics, then the input gradient): the leaky ReLU's mask is
// taken from the sign of y, which equals the sign of its input for any slope >= 0.
//
// Accepts float and double tensors in NCHW-contiguous or channels-last (NHWC) layout; the
// output has the input's layout. Sums are accumulated in double.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

enum class Layout { kNCHW, kNHWC };

Layout layout_of(const at::Tensor& x) {
  if (x.is_contiguous()) return Layout::kNCHW;
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "norm_act: x must be contiguous or channels-last, got strides ", x.strides());
  return Layout::kNHWC;
}

at::Tensor like_layout(const at::Tensor& t, Layout layout) {
  return layout == Layout::kNCHW ? t.contiguous()
                                 : t.contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor empty_like_layout(const at::Tensor& x, Layout layout) {
  return layout == Layout::kNCHW
             ? at::empty_like(x, at::MemoryFormat::Contiguous)
             : at::empty_like(x, at::MemoryFormat::ChannelsLast);
}

// Per-plane sums s1[b, c] = sum_i u_i and s2[b, c] = sum_i u_i * v_i over the H x W plane,
// with u = x (forward: v = x too) or u = act'(z) * grad (backward: v = x). Loops are written
// for the compiler to vectorise (omp simd); sums are accumulated in double.
// NCHW: plane (b, c) is contiguous. NHWC: sample b is HW rows of C contiguous values; rows are
// split into chunks whose partial sums are added afterwards (so B = 1 still uses every thread).
template <typename scalar_t, bool kBackward>
void plane_sums(int64_t B, int64_t C, int64_t HW, Layout layout, const scalar_t* up,
                const scalar_t* yp, const scalar_t* vp, const scalar_t* piv, scalar_t neg,
                std::vector<double>& s1, std::vector<double>& s2) {
  s1.assign(B * C, 0.0);
  s2.assign(B * C, 0.0);
  if (layout == Layout::kNCHW) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      constexpr int64_t kLanes = 16, kBlock = 1024;
      for (int64_t p = begin; p < end; ++p) {
        double a = 0.0, b = 0.0;
        const scalar_t* u = up + p * HW;
        const scalar_t* v = vp + p * HW;
        const scalar_t* y = kBackward ? yp + p * HW : nullptr;
        const scalar_t x0 = piv[p];
        // Independent lanes vectorise without reassociation; blocks bound the float error.
        for (int64_t start = 0; start < HW; start += kBlock) {
          const int64_t stop = std::min(HW, start + kBlock);
          scalar_t la[kLanes] = {}, lb[kLanes] = {};
          int64_t i = start;
          for (; i + kLanes <= stop; i += kLanes) {
            for (int64_t j = 0; j < kLanes; ++j) {
              scalar_t d = kBackward ? u[i + j] : u[i + j] - x0;
              if constexpr (kBackward) d = y[i + j] > scalar_t(0) ? d : d * neg;
              la[j] += d;
              lb[j] += d * (v[i + j] - x0);
            }
          }
          for (; i < stop; ++i) {
            scalar_t d = kBackward ? u[i] : u[i] - x0;
            if constexpr (kBackward) d = y[i] > scalar_t(0) ? d : d * neg;
            la[0] += d;
            lb[0] += d * (v[i] - x0);
          }
          for (int64_t j = 0; j < kLanes; ++j) {
            a += la[j];
            b += lb[j];
          }
        }
        s1[p] = a;
        s2[p] = b;
      }
    });
    return;
  }
  const int64_t rows_per_chunk = std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1));
  const int64_t chunks = (HW + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<double> part1(B * chunks * C, 0.0), part2(B * chunks * C, 0.0);
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / chunks, k = t % chunks;
      const int64_t r0 = k * rows_per_chunk, r1 = std::min(HW, r0 + rows_per_chunk);
      double* a = part1.data() + t * C;
      double* q = part2.data() + t * C;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t base = (b * HW + r) * C;
        const scalar_t* u = up + base;
        const scalar_t* v = vp + base;
        const scalar_t* y = kBackward ? yp + base : nullptr;
        const scalar_t* x0 = piv + b * C;
_Pragma("omp simd")
        for (int64_t c = 0; c < C; ++c) {
          scalar_t d = kBackward ? u[c] : u[c] - x0[c];
          if constexpr (kBackward) d = y[c] > scalar_t(0) ? d : d * neg;
          a[c] += static_cast<double>(d);
          q[c] += static_cast<double>(d) * static_cast<double>(v[c] - x0[c]);
        }
      }
    }
  });
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < chunks; ++k)
      for (int64_t c = 0; c < C; ++c) {
        s1[b * C + c] += part1[(b * chunks + k) * C + c];
        s2[b * C + c] += part2[(b * chunks + k) * C + c];
      }
}

// x at the first pixel of every plane (B * C): sums are taken of x - pivot, which keeps the
// variance free of cancellation when a plane's mean is large against its spread.
template <typename scalar_t>
std::vector<scalar_t> pivots(const scalar_t* xp, int64_t B, int64_t C, int64_t HW, Layout layout) {
  std::vector<scalar_t> out(B * C);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      out[b * C + c] = layout == Layout::kNCHW ? xp[(b * C + c) * HW] : xp[b * HW * C + c];
  return out;
}

// y = act(mul[p] * x + add[p] (+ residual)) over every element, p = b * C + c its plane.
template <typename scalar_t>
void apply_forward(int64_t B, int64_t C, int64_t HW, Layout layout,
                   const scalar_t* __restrict xp, const scalar_t* __restrict res,
                   const scalar_t* __restrict mul, const scalar_t* __restrict add, scalar_t neg,
                   scalar_t* __restrict yp) {
  if (layout == Layout::kNCHW) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t m = mul[p], a = add[p];
        const scalar_t* __restrict x = xp + p * HW;
        scalar_t* __restrict y = yp + p * HW;
        if (res != nullptr) {
          const scalar_t* __restrict r = res + p * HW;
          for (int64_t i = 0; i < HW; ++i) {
            const scalar_t z = m * x[i] + a + r[i];
            y[i] = z > scalar_t(0) ? z : z * neg;
          }
        } else {
          for (int64_t i = 0; i < HW; ++i) {
            const scalar_t z = m * x[i] + a;
            y[i] = z > scalar_t(0) ? z : z * neg;
          }
        }
      }
    });
    return;
  }
  at::parallel_for(0, B * HW, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* __restrict m = mul + (row / HW) * C;
      const scalar_t* __restrict a = add + (row / HW) * C;
      const scalar_t* __restrict x = xp + row * C;
      scalar_t* __restrict y = yp + row * C;
      if (res != nullptr) {
        const scalar_t* __restrict r = res + row * C;
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t z = m[c] * x[c] + a[c] + r[c];
          y[c] = z > scalar_t(0) ? z : z * neg;
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t z = m[c] * x[c] + a[c];
          y[c] = z > scalar_t(0) ? z : z * neg;
        }
      }
    }
  });
}

// dz = act'(z) * grad (from the sign of y); gx = k1[p] * dz + k2[p] * x + k3[p]; gr = dz.
template <typename scalar_t>
void apply_backward(int64_t B, int64_t C, int64_t HW, Layout layout,
                    const scalar_t* __restrict gp, const scalar_t* __restrict xp,
                    const scalar_t* __restrict yp, const scalar_t* __restrict k1,
                    const scalar_t* __restrict k2, const scalar_t* __restrict k3, scalar_t neg,
                    scalar_t* __restrict gx, scalar_t* __restrict gr) {
  auto run = [&](int64_t off, int64_t n, const scalar_t* __restrict c1,
                 const scalar_t* __restrict c2, const scalar_t* __restrict c3, int64_t step) {
    const scalar_t* __restrict g = gp + off;
    const scalar_t* __restrict x = xp + off;
    const scalar_t* __restrict y = yp + off;
    scalar_t* __restrict o = gx + off;
    if (step == 0) {
      const scalar_t a1 = c1[0], a2 = c2[0], a3 = c3[0];
      if (gr != nullptr) {
        scalar_t* __restrict q = gr + off;
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t d = y[i] > scalar_t(0) ? g[i] : g[i] * neg;
          o[i] = a1 * d + a2 * x[i] + a3;
          q[i] = d;
        }
      } else {
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t d = y[i] > scalar_t(0) ? g[i] : g[i] * neg;
          o[i] = a1 * d + a2 * x[i] + a3;
        }
      }
      return;
    }
    if (gr != nullptr) {
      scalar_t* __restrict q = gr + off;
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t d = y[i] > scalar_t(0) ? g[i] : g[i] * neg;
        o[i] = c1[i] * d + c2[i] * x[i] + c3[i];
        q[i] = d;
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t d = y[i] > scalar_t(0) ? g[i] : g[i] * neg;
        o[i] = c1[i] * d + c2[i] * x[i] + c3[i];
      }
    }
  };
  if (layout == Layout::kNCHW) {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) run(p * HW, HW, k1 + p, k2 + p, k3 + p, 0);
    });
    return;
  }
  at::parallel_for(0, B * HW, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p0 = (row / HW) * C;
      run(row * C, C, k1 + p0, k2 + p0, k3 + p0, 1);
    }
  });
}

void check_inputs(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) {
  TORCH_CHECK(x.dim() == 4, "norm_act: x must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), "norm_act: the fused kernel runs on CPU tensors only");
  const auto B = x.size(0), C = x.size(1);
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == B && scale.size(1) == C,
              "norm_act: scale must be (B, C) = (", B, ", ", C, "), got ", scale.sizes());
  TORCH_CHECK(shift.sizes() == scale.sizes(), "norm_act: shift must match scale, got ",
              shift.sizes());
}

}  // namespace

// Returns {y, mean, rstd}; mean and rstd are (B, C) in x's dtype.
std::vector<at::Tensor> norm_act_forward(const at::Tensor& x_in, const at::Tensor& scale_in,
                                         const at::Tensor& shift_in,
                                         const c10::optional<at::Tensor>& residual_in,
                                         bool act, double slope, double eps) {
  check_inputs(x_in, scale_in, shift_in);
  const Layout layout = layout_of(x_in);
  const auto B = x_in.size(0), C = x_in.size(1), HW = x_in.size(2) * x_in.size(3);
  at::Tensor x = x_in;
  at::Tensor scale = scale_in.to(x.scalar_type()).contiguous();
  at::Tensor shift = shift_in.to(x.scalar_type()).contiguous();
  at::Tensor residual;
  if (residual_in.has_value()) {
    TORCH_CHECK(residual_in->sizes() == x.sizes(), "norm_act: residual must match x, got ",
                residual_in->sizes());
    residual = like_layout(residual_in->to(x.scalar_type()), layout);
  }
  at::Tensor y = empty_like_layout(x, layout);
  at::Tensor mean = at::empty({B, C}, x.options());
  at::Tensor rstd = at::empty({B, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_act_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    std::vector<double> s1, s2;
    const std::vector<scalar_t> piv = pivots(xp, B, C, HW, layout);
    plane_sums<scalar_t, false>(B, C, HW, layout, xp, nullptr, xp, piv.data(), scalar_t(1), s1,
                                s2);
    std::vector<scalar_t> mul(B * C), add(B * C);
    const scalar_t* sp = scale.data_ptr<scalar_t>();
    const scalar_t* hp = shift.data_ptr<scalar_t>();
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* rp = rstd.data_ptr<scalar_t>();
    for (int64_t p = 0; p < B * C; ++p) {
      const double shifted = s1[p] / HW;  // mean of x - pivot
      const double m = piv[p] + shifted;
      const double var = std::max(s2[p] / HW - shifted * shifted, 0.0);
      const double r = 1.0 / std::sqrt(var + eps);
      mp[p] = static_cast<scalar_t>(m);
      rp[p] = static_cast<scalar_t>(r);
      mul[p] = static_cast<scalar_t>(sp[p] * r);
      add[p] = static_cast<scalar_t>(hp[p] - m * sp[p] * r);
    }
    scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* res = residual.defined() ? residual.data_ptr<scalar_t>() : nullptr;
    const scalar_t neg = static_cast<scalar_t>(act ? slope : 1.0);
    apply_forward<scalar_t>(B, C, HW, layout, xp, res, mul.data(), add.data(), neg, yp);
  });
  return {y, mean, rstd};
}

// Returns {grad_x, grad_scale, grad_shift, grad_residual (undefined without a residual)}.
std::vector<at::Tensor> norm_act_backward(const at::Tensor& grad_in, const at::Tensor& x,
                                          const at::Tensor& y, const at::Tensor& scale_in,
                                          const at::Tensor& mean, const at::Tensor& rstd,
                                          bool has_residual, bool act, double slope) {
  const Layout layout = layout_of(x);
  const auto B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor grad = like_layout(grad_in.to(x.scalar_type()), layout);
  at::Tensor scale = scale_in.to(x.scalar_type()).contiguous();
  at::Tensor grad_x = empty_like_layout(x, layout);
  at::Tensor grad_res = has_residual ? empty_like_layout(x, layout) : at::Tensor();
  at::Tensor grad_scale = at::empty({B, C}, x.options());
  at::Tensor grad_shift = at::empty({B, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_act_backward", [&] {
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* mp = mean.data_ptr<scalar_t>();
    const scalar_t* rp = rstd.data_ptr<scalar_t>();
    // dz = dy * act'(z), with act'(z) = 1 for z > 0, else the slope (as torch's leaky ReLU);
    // z > 0 exactly when y > 0, for any slope >= 0.
    const scalar_t neg = static_cast<scalar_t>(act ? slope : 1.0);
    std::vector<double> s1, s2;  // sum dz, sum dz * (x - pivot)
    const std::vector<scalar_t> piv = pivots(xp, B, C, HW, layout);
    plane_sums<scalar_t, true>(B, C, HW, layout, gp, yp, xp, piv.data(), neg, s1, s2);
    const scalar_t* sp = scale.data_ptr<scalar_t>();
    scalar_t* gsc = grad_scale.data_ptr<scalar_t>();
    scalar_t* gsh = grad_shift.data_ptr<scalar_t>();
    // With x_hat = (x - mean) * rstd: dscale = sum dz * x_hat, dshift = sum dz, and
    // dx = scale * rstd * (dz - mean(dz) - x_hat * mean(dz * x_hat)) = k1 dz + k2 x + k3.
    std::vector<scalar_t> k1(B * C), k2(B * C), k3(B * C);
    for (int64_t p = 0; p < B * C; ++p) {
      const double r = rp[p], m = mp[p];
      // s2 = sum dz * (x - pivot), so sum dz * (x - mean) = s2 - (mean - pivot) * s1.
      const double sum_dz = s1[p], sum_dz_xhat = r * (s2[p] - (m - piv[p]) * s1[p]);
      gsc[p] = static_cast<scalar_t>(sum_dz_xhat);
      gsh[p] = static_cast<scalar_t>(sum_dz);
      const double a = static_cast<double>(sp[p]) * r;
      const double m1 = sum_dz / HW, m2 = sum_dz_xhat / HW;
      k1[p] = static_cast<scalar_t>(a);
      k2[p] = static_cast<scalar_t>(-a * m2 * r);
      k3[p] = static_cast<scalar_t>(a * (-m1 + m2 * r * m));
    }
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    scalar_t* gr = has_residual ? grad_res.data_ptr<scalar_t>() : nullptr;
    apply_backward<scalar_t>(B, C, HW, layout, gp, xp, yp, k1.data(), k2.data(), k3.data(), neg,
                             gx, gr);
  });
  return {grad_x, grad_scale, grad_shift, grad_res};
}

// The op with its backward pass in C++: autograd calls it without the Python interpreter, so
// the trainer's two direction threads never wait on each other's GIL for it. Two functions,
// with and without the residual input (autograd functions take no undefined tensors).
torch::autograd::variable_list norm_act_grads(torch::autograd::AutogradContext* ctx,
                                              const torch::autograd::variable_list& grads,
                                              bool has_residual) {
  const auto saved = ctx->get_saved_variables();
  auto g = norm_act_backward(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4],
                             has_residual, ctx->saved_data["act"].toBool(),
                             ctx->saved_data["slope"].toDouble());
  const auto scale_dtype = static_cast<at::ScalarType>(ctx->saved_data["scale_dtype"].toInt());
  const auto shift_dtype = static_cast<at::ScalarType>(ctx->saved_data["shift_dtype"].toInt());
  torch::autograd::variable_list out = {g[0], g[1].to(scale_dtype), g[2].to(shift_dtype)};
  if (has_residual) out.push_back(g[3]);
  out.insert(out.end(), {at::Tensor(), at::Tensor(), at::Tensor()});  // act, slope, eps
  return out;
}

at::Tensor norm_act_save(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                         const at::Tensor& scale, const at::Tensor& shift,
                         const c10::optional<at::Tensor>& residual, bool act, double slope,
                         double eps) {
  auto out = norm_act_forward(x, scale, shift, residual, act, slope, eps);
  ctx->save_for_backward({x, out[0], scale, out[1], out[2]});
  ctx->saved_data["act"] = act;
  ctx->saved_data["slope"] = slope;
  ctx->saved_data["scale_dtype"] = static_cast<int64_t>(scale.scalar_type());
  ctx->saved_data["shift_dtype"] = static_cast<int64_t>(shift.scalar_type());
  return out[0];
}

class NormActFunction : public torch::autograd::Function<NormActFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& scale, const at::Tensor& shift, bool act,
                            double slope, double eps) {
    return norm_act_save(ctx, x, scale, shift, c10::nullopt, act, slope, eps);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return norm_act_grads(ctx, grads, false);
  }
};

class NormActResidualFunction : public torch::autograd::Function<NormActResidualFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& scale, const at::Tensor& shift,
                            const at::Tensor& residual, bool act, double slope, double eps) {
    return norm_act_save(ctx, x, scale, shift, residual, act, slope, eps);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return norm_act_grads(ctx, grads, true);
  }
};

at::Tensor norm_act(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                    const c10::optional<at::Tensor>& residual, bool act, double slope,
                    double eps) {
  if (residual.has_value())
    return NormActResidualFunction::apply(x, scale, shift, *residual, act, slope, eps);
  return NormActFunction::apply(x, scale, shift, act, slope, eps);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The GIL is released while the kernel runs: the trainer's two direction threads call it
  // concurrently.
  m.def("forward", &norm_act_forward, "fused instance norm + affine + residual + leaky ReLU",
        py::call_guard<py::gil_scoped_release>());
  m.def("backward", &norm_act_backward, "its backward pass",
        py::call_guard<py::gil_scoped_release>());
  m.def("norm_act", &norm_act, "the op with its C++ autograd function",
        py::call_guard<py::gil_scoped_release>());
}
