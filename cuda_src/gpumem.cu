// ap-gpumem: HBM bandwidth (DAXPY), FP64 compute (cuBLAS DGEMM) and pinned host-to-device
// bandwidth of each GPU, as one JSON line.
//
// Usage: ap-gpumem [--device N] [--elements E] [--daxpy-iters K] [--dgemm-n N] [--dgemm-iters K]
//                  [--dgemm-warmup W] [--help]
//   --device N        measure only CUDA device N (PCI bus order, like NVML); default all
//   --elements E      doubles per DAXPY vector and per H2D copy (default 134217728 = 128 Mi, 1 GiB)
//   --daxpy-iters K   timed DAXPY launches (default 20)
//   --dgemm-n N       DGEMM size N x N x N (default 8192)
//   --dgemm-iters K   timed DGEMM calls (default 50)
//   --dgemm-warmup W  untimed DGEMM calls first (default 2)
//
// Figures: h2d_pinned_gbps is the best of 3 pinned copies of E doubles (GB/s = 1e9 bytes/s);
// daxpy_gbps counts 24 bytes per element (read x, read y, write y) over all timed launches;
// dgemm_tflops counts 2*N^3 floating-point operations per call (1 TFLOPS = 1e12 FLOP/s).
// daxpy_mismatches counts elements whose final value differs from the exact expected one (the
// inputs are chosen so that every intermediate is exactly representable): non-zero means the GPU
// computed or stored wrong numbers.
//
// Output (stdout, exactly one line):
//   {"tool":"ap-gpumem","version":1,"cuda_runtime_version":13000,"cuda_driver_version":13000,
//    "elements":134217728,"daxpy_iterations":20,"dgemm_n":8192,"dgemm_iterations":50,
//    "devices":[{"index":0,"name":"NVIDIA H200","pci_bus_id":"00000000:19:00.0",
//    "h2d_pinned_gbps":53.2,"daxpy_gbps":4210.5,"daxpy_mismatches":0,"dgemm_tflops":58.3}],
//    "errors":[]}
//
// Exit codes:
//   0  every requested device was measured
//   1  a CUDA or cuBLAS error (the JSON line is still printed, with an "error" field)
//   2  usage error (bad option or device index)
//   3  no CUDA device or no driver
#include <cublas_v2.h>

#include "common.h"

namespace {

const char* kUsage =
    "usage: ap-gpumem [--device N] [--elements E] [--daxpy-iters K] [--dgemm-n N] [--dgemm-iters K]\n"
    "                 [--dgemm-warmup W] [--help]\n"
    "Prints one JSON line: DAXPY GB/s, DGEMM TFLOPS, pinned H2D GB/s per GPU.\n"
    "Exit codes: 0 ok, 1 CUDA/cuBLAS error, 2 usage, 3 no CUDA device.\n";

struct Options {
    long long device = -1;
    long long elements = 128LL << 20;
    long long daxpy_iters = 20;
    long long dgemm_n = 8192;
    long long dgemm_iters = 50;
    long long dgemm_warmup = 2;
};

Options parse(int argc, char** argv, bool& help) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            help = true;
        } else if (ap::int_option(argc, argv, i, "--device", 0, 1023, o.device) ||
                   ap::int_option(argc, argv, i, "--elements", 1024, 1LL << 32, o.elements) ||
                   ap::int_option(argc, argv, i, "--daxpy-iters", 1, 100000, o.daxpy_iters) ||
                   ap::int_option(argc, argv, i, "--dgemm-n", 64, 65536, o.dgemm_n) ||
                   ap::int_option(argc, argv, i, "--dgemm-iters", 1, 100000, o.dgemm_iters) ||
                   ap::int_option(argc, argv, i, "--dgemm-warmup", 0, 1000, o.dgemm_warmup)) {
        } else {
            throw ap::UsageFailure("unknown option '" + arg + "'");
        }
    }
    return o;
}

void check_cublas(cublasStatus_t status, const char* call, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        throw ap::CudaFailure(std::string(call) + ": " + cublasGetStatusString(status) + " (cuBLAS status " +
                              std::to_string(static_cast<int>(status)) + ", line " + std::to_string(line) + ")");
    }
}
#define AP_CKB(call) check_cublas((call), #call, __LINE__)

struct Handle {
    cublasHandle_t h = nullptr;
    Handle() { AP_CKB(cublasCreate(&h)); }
    ~Handle() {
        if (h) cublasDestroy(h);
    }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
};

__global__ void fill(double* p, size_t n, double value) {
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
        p[i] = value;
}

// Small non-trivial values so DGEMM does real work (an all-zero matrix draws less power).
__global__ void fill_pattern(double* p, size_t n) {
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
        p[i] = 0.5 + 0.125 * static_cast<double>(i % 7);
}

__global__ void daxpy(size_t n, double a, const double* __restrict__ x, double* __restrict__ y) {
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
        y[i] = a * x[i] + y[i];
}

__global__ void count_mismatches(size_t n, const double* y, double expected, unsigned long long* count) {
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
        if (y[i] != expected) atomicAdd(count, 1ULL);
}

unsigned grid_for(size_t n, unsigned threads) {
    const size_t blocks = (n + threads - 1) / threads;
    return static_cast<unsigned>(blocks < (1u << 30) ? blocks : (1u << 30));
}

void measure_h2d(const Options& o, ap::JsonObject& dev) {
    const size_t bytes = static_cast<size_t>(o.elements) * sizeof(double);
    ap::DeviceBuffer d(bytes);
    ap::PinnedBuffer h(bytes);
    std::memset(h.ptr, 1, bytes);
    AP_CK(cudaMemcpy(d.ptr, h.ptr, bytes, cudaMemcpyHostToDevice));
    double best = 0.0;
    for (int r = 0; r < 3; ++r) {
        const float ms = ap::time_ms([&] { AP_CK(cudaMemcpy(d.ptr, h.ptr, bytes, cudaMemcpyHostToDevice)); });
        const double v = ap::gbps(static_cast<double>(bytes), ms);
        if (v > best) best = v;
    }
    dev.num("h2d_pinned_gbps", best);
}

void measure_daxpy(const Options& o, ap::JsonObject& dev) {
    const size_t n = static_cast<size_t>(o.elements);
    const unsigned threads = 256;
    const unsigned blocks = grid_for(n, threads);
    ap::DeviceBuffer x(n * sizeof(double)), y(n * sizeof(double)), counter(sizeof(unsigned long long));
    double* px = static_cast<double*>(x.ptr);
    double* py = static_cast<double*>(y.ptr);
    fill<<<blocks, threads>>>(px, n, 1.0);
    fill<<<blocks, threads>>>(py, n, 0.0);
    AP_CK(cudaGetLastError());
    const double a = 2.0;
    daxpy<<<blocks, threads>>>(n, a, px, py);  // warm-up
    AP_CK(cudaGetLastError());
    const float ms = ap::time_ms([&] {
        for (long long k = 0; k < o.daxpy_iters; ++k) daxpy<<<blocks, threads>>>(n, a, px, py);
        AP_CK(cudaGetLastError());
    });
    dev.num("daxpy_gbps", ap::gbps(24.0 * static_cast<double>(n) * static_cast<double>(o.daxpy_iters), ms));
    // y started at 0 and gained exactly a*1.0 per launch (warm-up included): small integers, exact.
    const double expected = a * static_cast<double>(o.daxpy_iters + 1);
    AP_CK(cudaMemset(counter.ptr, 0, sizeof(unsigned long long)));
    count_mismatches<<<blocks, threads>>>(n, py, expected, static_cast<unsigned long long*>(counter.ptr));
    AP_CK(cudaGetLastError());
    unsigned long long mismatches = 0;
    AP_CK(cudaMemcpy(&mismatches, counter.ptr, sizeof mismatches, cudaMemcpyDeviceToHost));
    dev.integer("daxpy_mismatches", static_cast<long long>(mismatches));
}

void measure_dgemm(const Options& o, ap::JsonObject& dev) {
    const int n = static_cast<int>(o.dgemm_n);
    const size_t count = static_cast<size_t>(n) * static_cast<size_t>(n);
    ap::DeviceBuffer a(count * sizeof(double)), b(count * sizeof(double)), c(count * sizeof(double));
    const unsigned blocks = grid_for(count, 256);
    fill_pattern<<<blocks, 256>>>(static_cast<double*>(a.ptr), count);
    fill_pattern<<<blocks, 256>>>(static_cast<double*>(b.ptr), count);
    fill<<<blocks, 256>>>(static_cast<double*>(c.ptr), count, 0.0);
    AP_CK(cudaGetLastError());
    Handle handle;
    const double alpha = 1.0, beta = 0.0;
    auto call = [&] {
        AP_CKB(cublasDgemm(handle.h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, static_cast<const double*>(a.ptr), n,
                           static_cast<const double*>(b.ptr), n, &beta, static_cast<double*>(c.ptr), n));
    };
    for (long long w = 0; w < o.dgemm_warmup; ++w) call();
    AP_CK(cudaDeviceSynchronize());
    const float ms = ap::time_ms([&] {
        for (long long k = 0; k < o.dgemm_iters; ++k) call();
    });
    const double flop = 2.0 * static_cast<double>(n) * n * n * static_cast<double>(o.dgemm_iters);
    dev.num("dgemm_tflops", ms > 0 ? flop / (ms * 1e-3) / 1e12 : 0.0);
}

void measure(int index, const Options& o, ap::JsonObject& dev) {
    AP_CK(cudaSetDevice(index));
    ap::device_identity(dev, index);
    measure_h2d(o, dev);
    measure_daxpy(o, dev);
    measure_dgemm(o, dev);
}

}  // namespace

int main(int argc, char** argv) {
    ap::JsonObject out;
    Options o;
    if (int code = ap::start("ap-gpumem", kUsage, argc, argv, parse, o, out); code >= 0) return code;
    out.integer("elements", o.elements);
    out.integer("daxpy_iterations", o.daxpy_iters);
    out.integer("dgemm_n", o.dgemm_n);
    out.integer("dgemm_iterations", o.dgemm_iters);

    return ap::run_devices("ap-gpumem", out, o.device, [&](int i, ap::JsonObject& dev) { measure(i, o, dev); });
}
