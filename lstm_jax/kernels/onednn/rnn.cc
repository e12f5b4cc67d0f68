// oneDNN's RNN primitives (vanilla LSTM, linear-before-reset GRU) as XLA FFI handlers.
//
// One layer, one direction, float32, time-major: the same primitives PyTorch's CPU `nn.LSTM`
// runs. Python (lstm_jax/kernels/onednn_rnn.py) loads this library with ctypes, registers the
// handlers with jax.ffi and wraps them in a jax.custom_vjp.
//
// Layouts (oneDNN's names): inputs `tnc` [T, N, I]; carries `ldnc` [1, 1, N, H] (= [N, H]);
// weights `ldigo` [1, 1, I, G, H] (= our [I, G*H] with the gate blocks along the columns);
// bias `ldgo` [1, 1, G', H]. LSTM gates are i, f, g, o (ours and PyTorch's order); the GRU's
// are u, r, n with a fourth bias block, the recurrent candidate bias: Python permutes our
// (r, z, n) blocks into that order.
//
// Primitive descriptors are built once per (cell, pass, T, N, I, H) and kept; each calling
// thread keeps its scratchpad; weights are reordered per call into the primitive's layout.
// oneDNN must be the TBB build: the GNU OpenMP one shares libgomp with PyTorch when both are
// loaded, and then both ran several times slower (measured; see onednn_rnn.py).

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

enum Cell : int64_t { kLSTM = 0, kGRU = 1 };
enum Pass : int { kInference = 0, kTraining = 1, kBackward = 2 };

constexpr auto kF32 = memory::data_type::f32;
constexpr auto kDirection = dnnl::rnn_direction::unidirectional_left2right;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The descriptors of one (cell, shape): what the user's buffers look like.
struct Descs {
  memory::desc x, h, w_x, w_h, bias, y, any_w_x, any_w_h;
  Descs(Cell cell, int64_t T, int64_t N, int64_t I, int64_t H) {
    // Both have four bias blocks: the LSTM's i, f, g, o; the GRU's u, r, n and the recurrent n.
    const int64_t G = cell == kLSTM ? 4 : 3, GB = 4;
    x = memory::desc({T, N, I}, kF32, tag::tnc);
    y = memory::desc({T, N, H}, kF32, tag::tnc);
    h = memory::desc({1, 1, N, H}, kF32, tag::ldnc);
    w_x = memory::desc({1, 1, I, G, H}, kF32, tag::ldigo);
    w_h = memory::desc({1, 1, H, G, H}, kF32, tag::ldigo);
    any_w_x = memory::desc({1, 1, I, G, H}, kF32, tag::any);
    any_w_h = memory::desc({1, 1, H, G, H}, kF32, tag::any);
    bias = memory::desc({1, 1, GB, H}, kF32, tag::ldgo);
  }
};

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A forward primitive (inference or training) or a backward one, with its descriptor.
struct Prim {
  Descs d;  // the user's buffers
  dnnl::primitive prim;
  memory::desc w_x, w_h, dw_x, dw_h, workspace, scratchpad;  // what the primitive wants
};

Prim build(Cell cell, Pass pass, int64_t T, int64_t N, int64_t I, int64_t H) {
  Prim p{Descs(cell, T, N, I, H)};
  const Descs& d = p.d;
  auto& eng = cpu_engine();
  if (pass != kBackward) {
    if (cell == kLSTM) {
      auto pd = dnnl::lstm_forward::primitive_desc(
          eng, pass == kInference ? dnnl::prop_kind::forward_inference : dnnl::prop_kind::forward_training,
          kDirection, d.x, d.h, d.h, d.any_w_x, d.any_w_h, d.bias, d.y, d.h, d.h, user_scratchpad());
      p.prim = dnnl::lstm_forward(pd);
      p.w_x = pd.weights_layer_desc(), p.w_h = pd.weights_iter_desc();
      p.workspace = pd.workspace_desc(), p.scratchpad = pd.scratchpad_desc();
    } else {
      auto pd = dnnl::lbr_gru_forward::primitive_desc(
          eng, pass == kInference ? dnnl::prop_kind::forward_inference : dnnl::prop_kind::forward_training,
          kDirection, d.x, d.h, d.any_w_x, d.any_w_h, d.bias, d.y, d.h, user_scratchpad());
      p.prim = dnnl::lbr_gru_forward(pd);
      p.w_x = pd.weights_layer_desc(), p.w_h = pd.weights_iter_desc();
      p.workspace = pd.workspace_desc(), p.scratchpad = pd.scratchpad_desc();
    }
    return p;
  }
  if (cell == kLSTM) {
    auto hint = dnnl::lstm_forward::primitive_desc(eng, dnnl::prop_kind::forward_training, kDirection, d.x, d.h,
                                                   d.h, d.any_w_x, d.any_w_h, d.bias, d.y, d.h, d.h);
    auto pd = dnnl::lstm_backward::primitive_desc(
        eng, dnnl::prop_kind::backward, kDirection, d.x, d.h, d.h, d.any_w_x, d.any_w_h, d.bias, d.y, d.h, d.h,
        d.x, d.h, d.h, d.any_w_x, d.any_w_h, d.bias, d.y, d.h, d.h, hint, user_scratchpad());
    p.prim = dnnl::lstm_backward(pd);
    p.w_x = pd.weights_layer_desc(), p.w_h = pd.weights_iter_desc();
    p.dw_x = pd.diff_weights_layer_desc(), p.dw_h = pd.diff_weights_iter_desc();
    p.workspace = pd.workspace_desc(), p.scratchpad = pd.scratchpad_desc();
  } else {
    auto hint = dnnl::lbr_gru_forward::primitive_desc(eng, dnnl::prop_kind::forward_training, kDirection, d.x, d.h,
                                                      d.any_w_x, d.any_w_h, d.bias, d.y, d.h);
    auto pd = dnnl::lbr_gru_backward::primitive_desc(eng, dnnl::prop_kind::backward, kDirection, d.x, d.h,
                                                     d.any_w_x, d.any_w_h, d.bias, d.y, d.h, d.x, d.h, d.any_w_x,
                                                     d.any_w_h, d.bias, d.y, d.h, hint, user_scratchpad());
    p.prim = dnnl::lbr_gru_backward(pd);
    p.w_x = pd.weights_layer_desc(), p.w_h = pd.weights_iter_desc();
    p.dw_x = pd.diff_weights_layer_desc(), p.dw_h = pd.diff_weights_iter_desc();
    p.workspace = pd.workspace_desc(), p.scratchpad = pd.scratchpad_desc();
  }
  return p;
}

// Built once per key; oneDNN primitives may run concurrently from several threads.
const Prim& cached(Cell cell, Pass pass, int64_t T, int64_t N, int64_t I, int64_t H) {
  static std::mutex lock;
  static std::map<std::tuple<int64_t, int, int64_t, int64_t, int64_t, int64_t>, std::unique_ptr<Prim>> cache;
  std::lock_guard<std::mutex> guard(lock);
  auto& slot = cache[{cell, pass, T, N, I, H}];
  if (!slot) slot = std::make_unique<Prim>(build(cell, pass, T, N, I, H));
  return *slot;
}

// A scratchpad of at least `bytes` for this thread, kept between calls: a fresh one at every
// call would be faulted in page by page again. XLA calls from a fixed pool of threads.
void* thread_scratch(size_t bytes) {
  struct Buffer {
    void* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffer;
  if (bytes > buffer.size) {
    std::free(buffer.data);
    buffer.size = (bytes + 4095) / 4096 * 4096;
    buffer.data = std::aligned_alloc(4096, buffer.size);
    if (!buffer.data) throw std::bad_alloc();
  }
  return buffer.data;
}

// Asks the kernel to back a fresh buffer with 2 MiB pages where it can. The training workspace
// (tens of MB) is a new XLA buffer at every call, and oneDNN's first touch of it faulted in one
// 4 KiB page at a time.
void prefer_huge_pages(void* data, size_t bytes) {
  constexpr uintptr_t kHuge = 2u << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

memory wrap(const memory::desc& md, const void* data) {
  return memory(md, cpu_engine(), const_cast<void*>(data));
}

// The user's weights in the layout the primitive wants: the buffer itself, or a reordered copy.
memory weights_for(const memory::desc& wanted, const memory::desc& user_md, const void* data, dnnl::stream& s) {
  memory user = wrap(user_md, data);
  if (wanted == user_md) return user;
  memory mine(wanted, cpu_engine());
  dnnl::reorder(user, mine).execute(s, user, mine);
  return mine;
}


ffi::Error failure(const std::exception& e) {
  return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN RNN: ") + e.what());
}

using F32 = ffi::Buffer<ffi::F32>;
using OutF32 = ffi::ResultBuffer<ffi::F32>;
using OutU8 = ffi::ResultBuffer<ffi::U8>;
using U8 = ffi::Buffer<ffi::U8>;

// The primitive for a call with inputs x [T, N, I] and carry h0 [N, H].
const Prim& primitive_for(Cell cell, Pass pass, const F32& x, const F32& h0) {
  const auto dims = x.dimensions();
  return cached(cell, pass, dims[0], dims[1], dims[2], h0.dimensions()[1]);
}

// The arguments forward and backward share: the layer's inputs, weights (in the primitive's
// layout), bias and outputs, and this thread's scratchpad.
std::unordered_map<int, memory> shared_args(const Prim& p, const Descs& d, dnnl::stream& s, const float* x,
                                            const float* h0, const float* w_x, const float* w_h,
                                            const float* bias, const float* y, const float* h_last) {
  return {{DNNL_ARG_SRC_LAYER, wrap(d.x, x)},
          {DNNL_ARG_SRC_ITER, wrap(d.h, h0)},
          {DNNL_ARG_WEIGHTS_LAYER, weights_for(p.w_x, d.w_x, w_x, s)},
          {DNNL_ARG_WEIGHTS_ITER, weights_for(p.w_h, d.w_h, w_h, s)},
          {DNNL_ARG_BIAS, wrap(d.bias, bias)},
          {DNNL_ARG_DST_LAYER, wrap(d.y, y)},
          {DNNL_ARG_DST_ITER, wrap(d.h, h_last)},
          {DNNL_ARG_SCRATCHPAD, wrap(p.scratchpad, thread_scratch(p.scratchpad.get_size()))}};
}

// Forward: x [T, N, I], h0 (and c0 for the LSTM) [N, H], w_x [I, G*H], w_h [H, G*H],
// bias [G'*H] -> y [T, N, H], h_T (and c_T) [N, H], and in training the workspace the
// backward pass reads.
ffi::Error forward(Cell cell, Pass pass, F32 x, F32 h0, const float* c0, F32 w_x, F32 w_h, F32 bias, OutF32 y,
                   OutF32 h_last, float* c_last, uint8_t* workspace) {
  try {
    const Prim& p = primitive_for(cell, pass, x, h0);
    const Descs& d = p.d;
    dnnl::stream s(cpu_engine());
    auto args = shared_args(p, d, s, x.typed_data(), h0.typed_data(), w_x.typed_data(), w_h.typed_data(),
                            bias.typed_data(), y->typed_data(), h_last->typed_data());
    if (cell == kLSTM) {
      args.emplace(DNNL_ARG_SRC_ITER_C, wrap(d.h, c0));
      args.emplace(DNNL_ARG_DST_ITER_C, wrap(d.h, c_last));
    }
    if (pass == kTraining) {
      prefer_huge_pages(workspace, p.workspace.get_size());
      args.emplace(DNNL_ARG_WORKSPACE, wrap(p.workspace, workspace));
    }
    p.prim.execute(s, args);
    s.wait();
    return ffi::Error::Success();
  } catch (const std::exception& e) {
    return failure(e);
  }
}

// Zeroed memory in the primitive's diff-weights layout (oneDNN accumulates into it).
memory zeroed(const memory::desc& md) {
  memory m(md, cpu_engine());
  std::memset(m.get_data_handle(), 0, md.get_size());
  return m;
}

// Backward: the forward's inputs and outputs, its workspace and the output cotangents ->
// dx, dh0 (dc0), dw_x, dw_h, dbias.
ffi::Error backward(Cell cell, F32 x, F32 h0, const float* c0, F32 w_x, F32 w_h, F32 bias, F32 y, F32 h_last,
                    const float* c_last, U8 workspace, F32 dy, F32 dh_last, const float* dc_last, OutF32 dx,
                    OutF32 dh0, float* dc0, OutF32 dw_x, OutF32 dw_h, OutF32 dbias, OutU8 workspace_out) {
  try {
    const Prim& p = primitive_for(cell, kBackward, x, h0);
    const Descs& d = p.d;
    dnnl::stream s(cpu_engine());
    // The workspace is aliased to an output (input_output_aliases): the primitive may write it.
    void* ws = workspace_out->untyped_data();
    if (ws != workspace.untyped_data()) std::memcpy(ws, workspace.untyped_data(), p.workspace.get_size());
    memory dw_x_mem = zeroed(p.dw_x), dw_h_mem = zeroed(p.dw_h);
    std::memset(dbias->typed_data(), 0, d.bias.get_size());
    auto args = shared_args(p, d, s, x.typed_data(), h0.typed_data(), w_x.typed_data(), w_h.typed_data(),
                            bias.typed_data(), y.typed_data(), h_last.typed_data());
    args.emplace(DNNL_ARG_WORKSPACE, wrap(p.workspace, ws));
    args.emplace(DNNL_ARG_DIFF_DST_LAYER, wrap(d.y, dy.typed_data()));
    args.emplace(DNNL_ARG_DIFF_DST_ITER, wrap(d.h, dh_last.typed_data()));
    args.emplace(DNNL_ARG_DIFF_SRC_LAYER, wrap(d.x, dx->typed_data()));
    args.emplace(DNNL_ARG_DIFF_SRC_ITER, wrap(d.h, dh0->typed_data()));
    args.emplace(DNNL_ARG_DIFF_WEIGHTS_LAYER, dw_x_mem);
    args.emplace(DNNL_ARG_DIFF_WEIGHTS_ITER, dw_h_mem);
    args.emplace(DNNL_ARG_DIFF_BIAS, wrap(d.bias, dbias->typed_data()));
    if (cell == kLSTM) {
      args.emplace(DNNL_ARG_SRC_ITER_C, wrap(d.h, c0));
      args.emplace(DNNL_ARG_DST_ITER_C, wrap(d.h, c_last));
      args.emplace(DNNL_ARG_DIFF_DST_ITER_C, wrap(d.h, dc_last));
      args.emplace(DNNL_ARG_DIFF_SRC_ITER_C, wrap(d.h, dc0));
    }
    p.prim.execute(s, args);
    // Diff weights back to our [I, G*H] layout.
    memory user_dw_x = wrap(d.w_x, dw_x->typed_data()), user_dw_h = wrap(d.w_h, dw_h->typed_data());
    dnnl::reorder(dw_x_mem, user_dw_x).execute(s, dw_x_mem, user_dw_x);
    dnnl::reorder(dw_h_mem, user_dw_h).execute(s, dw_h_mem, user_dw_h);
    s.wait();
    return ffi::Error::Success();
  } catch (const std::exception& e) {
    return failure(e);
  }
}

ffi::Error LstmForwardImpl(F32 x, F32 h0, F32 c0, F32 w_x, F32 w_h, F32 b, OutF32 y, OutF32 h_last, OutF32 c_last) {
  return forward(kLSTM, kInference, x, h0, c0.typed_data(), w_x, w_h, b, y, h_last, c_last->typed_data(), nullptr);
}

ffi::Error LstmForwardTrainImpl(F32 x, F32 h0, F32 c0, F32 w_x, F32 w_h, F32 b, OutF32 y, OutF32 h_last,
                                OutF32 c_last, OutU8 ws) {
  return forward(kLSTM, kTraining, x, h0, c0.typed_data(), w_x, w_h, b, y, h_last, c_last->typed_data(),
                 ws->typed_data());
}

ffi::Error LstmBackwardImpl(F32 x, F32 h0, F32 c0, F32 w_x, F32 w_h, F32 b, F32 y, F32 h_last, F32 c_last, U8 ws,
                            F32 dy, F32 dh_last, F32 dc_last, OutF32 dx, OutF32 dh0, OutF32 dc0, OutF32 dw_x,
                            OutF32 dw_h, OutF32 db, OutU8 ws_out) {
  return backward(kLSTM, x, h0, c0.typed_data(), w_x, w_h, b, y, h_last, c_last.typed_data(), ws, dy, dh_last,
                  dc_last.typed_data(), dx, dh0, dc0->typed_data(), dw_x, dw_h, db, ws_out);
}

ffi::Error GruForwardImpl(F32 x, F32 h0, F32 w_x, F32 w_h, F32 b, OutF32 y, OutF32 h_last) {
  return forward(kGRU, kInference, x, h0, nullptr, w_x, w_h, b, y, h_last, nullptr, nullptr);
}

ffi::Error GruForwardTrainImpl(F32 x, F32 h0, F32 w_x, F32 w_h, F32 b, OutF32 y, OutF32 h_last, OutU8 ws) {
  return forward(kGRU, kTraining, x, h0, nullptr, w_x, w_h, b, y, h_last, nullptr, ws->typed_data());
}

ffi::Error GruBackwardImpl(F32 x, F32 h0, F32 w_x, F32 w_h, F32 b, F32 y, F32 h_last, U8 ws, F32 dy, F32 dh_last,
                           OutF32 dx, OutF32 dh0, OutF32 dw_x, OutF32 dw_h, OutF32 db, OutU8 ws_out) {
  return backward(kGRU, x, h0, nullptr, w_x, w_h, b, y, h_last, nullptr, ws, dy, dh_last, nullptr, dx, dh0, nullptr,
                  dw_x, dw_h, db, ws_out);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxLstmForward, LstmForwardImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxLstmForwardTrain, LstmForwardTrainImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<U8>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxLstmBackward, LstmBackwardImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<U8>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<U8>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxGruForward, GruForwardImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxGruForwardTrain, GruForwardTrainImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<U8>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxGruBackward, GruBackwardImpl,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<U8>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<U8>());

// The training workspace's size in bytes, for the output the forward pass allocates
// (cell: 0 LSTM, 1 GRU). -1 if oneDNN refuses the shape.
extern "C" int64_t lstm_jax_onednn_workspace_bytes(int64_t cell, int64_t T, int64_t N, int64_t I, int64_t H) {
  try {
    return static_cast<int64_t>(cached(static_cast<Cell>(cell), kTraining, T, N, I, H).workspace.get_size());
  } catch (const std::exception&) {
    return -1;
  }
}

// oneDNN's version, major * 10000 + minor * 100 + patch.
extern "C" int64_t lstm_jax_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
