// Autocast control through libtorch's current (device-typed) API. tch 0.24 goes through
// at::autocast::set_enabled / is_enabled, which libtorch 2.11 deprecates with a warning printed on
// every call (thousands of log lines per epoch); these calls are the same operations without it.
#include <ATen/autocast_mode.h>
#include <cstdint>

extern "C" {
bool nnunet_autocast_is_enabled_cuda() { return at::autocast::is_autocast_enabled(at::kCUDA); }
void nnunet_autocast_set_enabled_cuda(bool b) { at::autocast::set_autocast_enabled(at::kCUDA, b); }
int64_t nnunet_autocast_increment_nesting() { return at::autocast::increment_nesting(); }
int64_t nnunet_autocast_decrement_nesting() { return at::autocast::decrement_nesting(); }
void nnunet_autocast_clear_cache() { at::autocast::clear_cache(); }
// The CUDA autocast dtype: 1 = bfloat16, 0 = float16 (libtorch's default).
int nnunet_autocast_dtype_is_bf16_cuda() { return at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16; }
void nnunet_autocast_set_dtype_bf16_cuda(int bf16) { at::autocast::set_autocast_dtype(at::kCUDA, bf16 ? at::kBFloat16 : at::kHalf); }
}
