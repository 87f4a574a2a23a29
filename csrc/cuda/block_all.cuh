// Block-wide reductions whose result every thread of the block gets (cub::BlockReduce plus a
// shared-memory broadcast), and the combine operators the row kernels use. CUDA only.
#pragma once

#include <cub/block/block_reduce.cuh>

#include <adkernels/math.h>

namespace adkernels::cuda {

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const { return a + b; }
};

struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const { return ad_max(a, b); }
};

// Reduces v over the block with op; every thread returns the result. Safe to call repeatedly
// (the shared storage is released by the trailing barrier). All threads must call it.
template <int THREADS, typename T, typename Op>
__device__ __forceinline__ T block_all(T v, Op op) {
  using Reduce = cub::BlockReduce<T, THREADS>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ T result;
  T r = Reduce(storage).Reduce(v, op);
  if (threadIdx.x == 0) result = r;
  __syncthreads();
  r = result;
  __syncthreads();
  return r;
}

}  // namespace adkernels::cuda
