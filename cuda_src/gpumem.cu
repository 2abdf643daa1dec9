// ap-gpumem: HBM bandwidth (DAXPY), FP64 compute (cuBLAS DGEMM, every element verified) and pinned
// host-to-device bandwidth of each GPU, as one JSON line.
//
// Usage: ap-gpumem [--device N | --pci-bus-id B] [--elements E] [--samples S] [--warmup-ms W]
//                  [--daxpy-iters K] [--dgemm-n N] [--dgemm-iters K] [--dgemm-seconds T] [--help]
//   --device N        measure only CUDA device N (PCI bus order, like NVML); default all
//   --pci-bus-id B    measure only the GPU at PCI bus id B (cudaDeviceGetByPCIBusId)
//   --elements E      doubles per DAXPY vector and per H2D copy (default 268435456 = 256 Mi, 2 GiB).
//                     The DAXPY working set (2 x 8 x E bytes) must be at least 4x the GPU's L2,
//                     else that GPU is a usage error: a smaller one measures the cache, not HBM
//   --samples S       timed samples of each figure, at least 10 (default 20)
//   --warmup-ms W     work before the first sample of each figure, at least 200 ms (default 250)
//   --daxpy-iters K   DAXPY launches per sample (default 5)
//   --dgemm-n N       DGEMM size N x N x N (default 8192)
//   --dgemm-iters K   DGEMM calls per sample (default 2)
//   --dgemm-seconds T sustained DGEMM afterwards for T seconds, one sample per second (default 0)
//   --daxpy-only      measure DAXPY alone (size sweeps)
//   --allow-cache     accept a DAXPY working set under 4x the L2, to find the cache knee in a
//                     sweep; the output then says "cache_sweep":true and no check judges it
//
// Figures (each a series: every sample, median, min, max, cv): "h2d" pinned host-to-device GB/s
// (buffer on the GPU's NUMA node, see ap-bandwidth); "daxpy" GB/s counting 24 bytes per element,
// the faster (by median) of a scalar and a vectorised (double2) kernel, both kept in
// "daxpy_variants"; "dgemm" TFLOPS counting 2*N^3 FP64 operations per call (1e12 FLOP/s).
// Both kernels compute exactly representable numbers and every element is compared with the
// exact answer: "daxpy_mismatches" and "dgemm_mismatches" count wrong elements (non-zero: the GPU
// computes or stores wrong numbers). DGEMM's inputs are A[i][k] = p_i + q_k and B[k][j] = r_k +
// s_j with small integers, so C[i][j] = N p_i s_j + p_i sum(r) + s_j sum(q) + sum(q r) exactly.
//
// Output (stdout, exactly one line; figures illustrative):
//   {"tool":"ap-gpumem","version":2,...,"cublas_version":130100,"elements":268435456,...,
//    "devices":[{"index":0,"name":"NVIDIA H200","pci_bus_id":"00000000:19:00.0","l2_bytes":62914560,
//    "numa":{...},"h2d":{...},"daxpy":{...},"daxpy_variant":"vector","daxpy_variants":{"scalar":4010.2,
//    "vector":4105.7},"daxpy_mismatches":0,"dgemm":{...},"dgemm_mismatches":0,
//    "dgemm_sustained":{...},"h2d_pinned_gbps":53.2,"daxpy_gbps":4105.7,"dgemm_tflops":58.3,
//    "telemetry":{"daxpy":{...},"dgemm":{...}},"counters":{"before":{...},"after":{...}}}],"errors":[]}
//
// Exit codes:
//   0  every requested device was measured (or skipped for MIG)
//   1  a CUDA or cuBLAS error, or a usage error found on a device (JSON line printed, with "error")
//   2  usage error (bad option or device index)
//   3  no CUDA device or no driver
#include <cublas_v2.h>

#include "measure.h"

namespace {

const char* kUsage =
    "usage: ap-gpumem [--device N | --pci-bus-id B] [--elements E] [--samples S] [--warmup-ms W]\n"
    "                 [--daxpy-iters K] [--dgemm-n N] [--dgemm-iters K] [--dgemm-seconds T]\n"
    "                 [--daxpy-only] [--allow-cache] [--help]\n"
    "Prints one JSON line: DAXPY GB/s, DGEMM TFLOPS (verified), pinned H2D GB/s per GPU.\n"
    "Exit codes: 0 ok, 1 CUDA/cuBLAS error, 2 usage, 3 no CUDA device.\n";

struct Options {
    long long device = -1;
    std::string pci_bus_id;
    long long elements = 256LL << 20;
    long long daxpy_iters = 5;
    long long dgemm_n = 8192;
    long long dgemm_iters = 2;
    long long dgemm_seconds = 0;
    bool daxpy_only = false;
    bool allow_cache = false;
    ap::Sampling sampling;
};

Options parse(int argc, char** argv, bool& help) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            help = true;
        } else if (arg == "--daxpy-only") {
            o.daxpy_only = true;
        } else if (arg == "--allow-cache") {
            o.allow_cache = true;
        } else if (ap::int_option(argc, argv, i, "--device", 0, 1023, o.device) ||
                   ap::str_option(argc, argv, i, "--pci-bus-id", ap::kBusIdChars, o.pci_bus_id) ||
                   ap::int_option(argc, argv, i, "--elements", 1024, 1LL << 32, o.elements) ||
                   ap::int_option(argc, argv, i, "--samples", 10, 10000, o.sampling.samples) ||
                   ap::int_option(argc, argv, i, "--warmup-ms", 200, 600000, o.sampling.warmup_ms) ||
                   ap::int_option(argc, argv, i, "--daxpy-iters", 1, 100000, o.daxpy_iters) ||
                   ap::int_option(argc, argv, i, "--dgemm-n", 64, 65536, o.dgemm_n) ||
                   ap::int_option(argc, argv, i, "--dgemm-iters", 1, 100000, o.dgemm_iters) ||
                   ap::int_option(argc, argv, i, "--dgemm-seconds", 0, 3600, o.dgemm_seconds)) {
        } else {
            throw ap::UsageFailure("unknown option '" + arg + "'");
        }
    }
    if (o.device >= 0 && !o.pci_bus_id.empty()) throw ap::UsageFailure("--device and --pci-bus-id exclude each other");
    return o;
}

const char* cublas_kind(cublasStatus_t status) {
    switch (status) {
        case CUBLAS_STATUS_NOT_INITIALIZED:
        case CUBLAS_STATUS_ALLOC_FAILED:
        case CUBLAS_STATUS_ARCH_MISMATCH:
        case CUBLAS_STATUS_NOT_SUPPORTED:
        case CUBLAS_STATUS_LICENSE_ERROR:
            return "setup";
        default:
            return "cuda";
    }
}

void check_cublas(cublasStatus_t status, const char* call, int line) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    // An execution failure is usually a CUDA error underneath (a faulting kernel): report that
    // one, with its kind, rather than cuBLAS's generic status.
    if (status == CUBLAS_STATUS_EXECUTION_FAILED) AP_CK(cudaDeviceSynchronize());
    throw ap::CudaFailure(std::string(call) + ": " + cublasGetStatusString(status) + " (cuBLAS status " +
                              std::to_string(static_cast<int>(status)) + ", line " + std::to_string(line) + ")",
                          cublas_kind(status), cublasGetStatusName(status));
}
#define AP_CKB(call) check_cublas((call), #call, __LINE__)

struct Handle {
    cublasHandle_t h = nullptr;
    explicit Handle(cudaStream_t stream) {
        AP_CKB(cublasCreate(&h));
        AP_CKB(cublasSetStream(h, stream));
    }
    ~Handle() {
        if (h) cublasDestroy(h);
    }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
};

#define AP_GRID_STRIDE(i, n)                                                              \
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < (n); \
         i += static_cast<size_t>(gridDim.x) * blockDim.x)

__global__ void fill(double* p, size_t n, double value) {
    AP_GRID_STRIDE(i, n) p[i] = value;
}

__global__ void daxpy(size_t n, double a, const double* __restrict__ x, double* __restrict__ y) {
    AP_GRID_STRIDE(i, n) y[i] = a * x[i] + y[i];
}

// 16-byte loads and stores: fewer memory instructions for the same bytes.
__global__ void daxpy_vec(size_t n, double a, const double2* __restrict__ x, double2* __restrict__ y) {
    AP_GRID_STRIDE(i, n / 2) {
        const double2 xv = x[i];
        double2 yv = y[i];
        yv.x = a * xv.x + yv.x;
        yv.y = a * xv.y + yv.y;
        y[i] = yv;
    }
    if (n % 2 && blockIdx.x == 0 && threadIdx.x == 0) {
        const double* xs = reinterpret_cast<const double*>(x);
        double* ys = reinterpret_cast<double*>(y);
        ys[n - 1] = a * xs[n - 1] + ys[n - 1];
    }
}

__global__ void count_mismatches(size_t n, const double* y, double expected, unsigned long long* count) {
    AP_GRID_STRIDE(i, n) if (y[i] != expected) atomicAdd(count, 1ULL);
}

// Small integers: A[i + k*n] = p_i + q_k, B[k + j*n] = r_k + s_j (column-major).
__device__ __host__ inline int p_of(long long i) { return static_cast<int>(i % 7) - 3; }
__device__ __host__ inline int q_of(long long k) { return static_cast<int>(k % 5) - 2; }
__device__ __host__ inline int r_of(long long k) { return static_cast<int>(k % 3) - 1; }
__device__ __host__ inline int s_of(long long j) { return static_cast<int>(j % 11) - 5; }

__global__ void fill_a(double* a, int n) {
    AP_GRID_STRIDE(e, static_cast<size_t>(n) * n) a[e] = p_of(e % n) + q_of(e / n);
}
__global__ void fill_b(double* b, int n) {
    AP_GRID_STRIDE(e, static_cast<size_t>(n) * n) b[e] = r_of(e % n) + s_of(e / n);
}

// Every element of C against the exact product (integers far below 2^53: no rounding anywhere).
__global__ void check_dgemm(const double* c, int n, long long sum_q, long long sum_r, long long sum_qr,
                            unsigned long long* count) {
    AP_GRID_STRIDE(e, static_cast<size_t>(n) * n) {
        const long long i = static_cast<long long>(e % n), j = static_cast<long long>(e / n);
        const long long want = n * p_of(i) * s_of(j) + p_of(i) * sum_r + s_of(j) * sum_q + sum_qr;
        if (c[e] != static_cast<double>(want)) atomicAdd(count, 1ULL);
    }
}

unsigned grid_for(size_t n, unsigned threads) {
    const size_t blocks = (n + threads - 1) / threads;
    return static_cast<unsigned>(blocks < (1u << 30) ? blocks : (1u << 30));
}

unsigned long long read_counter(const ap::DeviceBuffer& counter) {
    unsigned long long v = 0;
    AP_CK(cudaMemcpy(&v, counter.ptr, sizeof v, cudaMemcpyDeviceToHost));
    return v;
}

void measure_h2d(const Options& o, const std::string& bus, ap::Nvml::Dev handle, cudaStream_t stream,
                 ap::JsonObject& dev, ap::JsonObject& telemetry) {
    const size_t bytes = static_cast<size_t>(o.elements) * sizeof(double);
    ap::DeviceBuffer d(bytes);
    ap::NumaPlacement numa(bus, handle);
    ap::PinnedBuffer h(bytes);
    std::memset(h.ptr, 1, bytes);
    dev.raw("numa", numa.json(h.ptr));
    ap::Telemetry t(handle);
    const auto series = ap::copy_series(d.ptr, h.ptr, bytes, cudaMemcpyHostToDevice, stream, 1, o.sampling);
    telemetry.raw("h2d", t.finish());
    dev.raw("h2d", ap::series_json(series));
    dev.num("h2d_pinned_gbps", ap::median_of(series));
}

void measure_daxpy(const Options& o, ap::Nvml::Dev handle, cudaStream_t stream, size_t l2_bytes, ap::JsonObject& dev,
                   ap::JsonObject& telemetry) {
    const size_t n = static_cast<size_t>(o.elements);
    const size_t working_set = 2 * n * sizeof(double);
    if (working_set < 4 * l2_bytes && !o.allow_cache) {
        throw ap::CudaFailure("--elements " + std::to_string(n) + ": DAXPY working set " +
                                  std::to_string(working_set) + " bytes is below 4x the L2 (" +
                                  std::to_string(l2_bytes) + " bytes): it would measure the cache",
                              "usage");
    }
    const unsigned threads = 256;
    const unsigned blocks = grid_for(n, threads);
    ap::DeviceBuffer x(n * sizeof(double)), y(n * sizeof(double)), counter(sizeof(unsigned long long));
    double* px = static_cast<double*>(x.ptr);
    double* py = static_cast<double*>(y.ptr);
    const double a = 2.0;
    ap::JsonObject variants;
    std::vector<double> best;
    std::string best_name;
    unsigned long long mismatches = 0;
    ap::Telemetry t(handle);
    for (const char* name : {"scalar", "vector"}) {
        const bool vec = std::string(name) == "vector";
        fill<<<blocks, threads, 0, stream>>>(px, n, 1.0);
        fill<<<blocks, threads, 0, stream>>>(py, n, 0.0);
        AP_CK(cudaGetLastError());
        long long launches = 0;
        auto launch = [&](long long k) {
            for (long long i = 0; i < k; ++i) {
                if (vec) {
                    daxpy_vec<<<grid_for(n / 2 + 1, threads), threads, 0, stream>>>(
                        n, a, reinterpret_cast<const double2*>(px), reinterpret_cast<double2*>(py));
                } else {
                    daxpy<<<blocks, threads, 0, stream>>>(n, a, px, py);
                }
            }
            AP_CK(cudaGetLastError());
            launches += k;
        };
        ap::warm_up([&] { launch(1); }, stream, o.sampling.warmup_ms);
        std::vector<double> series;
        for (long long s = 0; s < o.sampling.samples; ++s) {
            const float ms = ap::time_ms([&] { launch(o.daxpy_iters); }, stream);
            series.push_back(ap::gbps(24.0 * static_cast<double>(n) * static_cast<double>(o.daxpy_iters), ms));
        }
        // y started at 0 and gained exactly a*1.0 per launch: small integers, exact.
        AP_CK(cudaMemsetAsync(counter.ptr, 0, sizeof(unsigned long long), stream));
        count_mismatches<<<blocks, threads, 0, stream>>>(n, py, a * static_cast<double>(launches),
                                                         static_cast<unsigned long long*>(counter.ptr));
        AP_CK(cudaGetLastError());
        AP_CK(cudaStreamSynchronize(stream));
        mismatches += read_counter(counter);
        const double med = ap::median_of(series);
        variants.num(name, med);
        if (best.empty() || med > ap::median_of(best)) {
            best = series;
            best_name = name;
        }
    }
    telemetry.raw("daxpy", t.finish());
    dev.raw("daxpy", ap::series_json(best));
    dev.str("daxpy_variant", best_name);
    dev.raw("daxpy_variants", variants.text());
    dev.num("daxpy_gbps", ap::median_of(best));
    dev.integer("daxpy_mismatches", static_cast<long long>(mismatches));
}

void measure_dgemm(const Options& o, ap::Nvml::Dev handle, cudaStream_t stream, ap::JsonObject& dev,
                   ap::JsonObject& telemetry) {
    const int n = static_cast<int>(o.dgemm_n);
    const size_t count = static_cast<size_t>(n) * static_cast<size_t>(n);
    ap::DeviceBuffer a(count * sizeof(double)), b(count * sizeof(double)), c(count * sizeof(double));
    ap::DeviceBuffer counter(sizeof(unsigned long long));
    const unsigned blocks = grid_for(count, 256);
    fill_a<<<blocks, 256, 0, stream>>>(static_cast<double*>(a.ptr), n);
    fill_b<<<blocks, 256, 0, stream>>>(static_cast<double*>(b.ptr), n);
    fill<<<blocks, 256, 0, stream>>>(static_cast<double*>(c.ptr), count, 0.0);
    AP_CK(cudaGetLastError());
    Handle cublas(stream);
    const double alpha = 1.0, beta = 0.0;
    auto call = [&](long long k) {
        for (long long i = 0; i < k; ++i) {
            AP_CKB(cublasDgemm(cublas.h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, static_cast<const double*>(a.ptr),
                               n, static_cast<const double*>(b.ptr), n, &beta, static_cast<double*>(c.ptr), n));
        }
    };
    const double flop = 2.0 * static_cast<double>(n) * n * n;
    ap::Telemetry t(handle);
    ap::warm_up([&] { call(1); }, stream, o.sampling.warmup_ms);
    std::vector<double> series;
    for (long long s = 0; s < o.sampling.samples; ++s) {
        const float ms = ap::time_ms([&] { call(o.dgemm_iters); }, stream);
        series.push_back(ms > 0 ? flop * static_cast<double>(o.dgemm_iters) / (ms * 1e-3) / 1e12 : 0.0);
    }
    telemetry.raw("dgemm", t.finish());
    dev.raw("dgemm", ap::series_json(series));
    dev.num("dgemm_tflops", ap::median_of(series));
    if (o.dgemm_seconds > 0) {
        // Sustained load: one sample per second of back-to-back calls; the telemetry of this
        // window shows the clocks and power the GPU holds under it.
        ap::Telemetry st(handle, std::chrono::milliseconds(100));
        std::vector<double> sustained;
        const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(o.dgemm_seconds);
        while (std::chrono::steady_clock::now() < end) {
            long long calls = 0;
            ap::Event start, stop;
            AP_CK(cudaEventRecord(start.ev, stream));
            const auto window = std::chrono::steady_clock::now() + std::chrono::seconds(1);
            while (std::chrono::steady_clock::now() < window) {
                call(1);
                ++calls;
                AP_CK(cudaStreamSynchronize(stream));  // bounds the queue so the window means 1 s
            }
            AP_CK(cudaEventRecord(stop.ev, stream));
            AP_CK(cudaEventSynchronize(stop.ev));
            float ms = 0.0f;
            AP_CK(cudaEventElapsedTime(&ms, start.ev, stop.ev));
            sustained.push_back(ms > 0 ? flop * static_cast<double>(calls) / (ms * 1e-3) / 1e12 : 0.0);
        }
        telemetry.raw("dgemm_sustained", st.finish());
        dev.raw("dgemm_sustained", ap::series_json(sustained));
    }
    long long sum_q = 0, sum_r = 0, sum_qr = 0;
    for (long long k = 0; k < n; ++k) {
        sum_q += q_of(k);
        sum_r += r_of(k);
        sum_qr += static_cast<long long>(q_of(k)) * r_of(k);
    }
    AP_CK(cudaMemsetAsync(counter.ptr, 0, sizeof(unsigned long long), stream));
    check_dgemm<<<blocks, 256, 0, stream>>>(static_cast<const double*>(c.ptr), n, sum_q, sum_r, sum_qr,
                                            static_cast<unsigned long long*>(counter.ptr));
    AP_CK(cudaGetLastError());
    AP_CK(cudaStreamSynchronize(stream));
    dev.integer("dgemm_mismatches", static_cast<long long>(read_counter(counter)));
}

void measure(int index, const Options& o, ap::JsonObject& dev) {
    AP_CK(cudaSetDevice(index));
    ap::device_identity(dev, index);
    cudaDeviceProp prop;
    AP_CK(cudaGetDeviceProperties(&prop, index));
    dev.integer("l2_bytes", prop.l2CacheSize);
    ap::around_device(index, dev, [&](const std::string& bus, ap::Nvml::Dev handle) {
        ap::Stream stream;
        ap::JsonObject telemetry;
        try {
            if (!o.daxpy_only) measure_h2d(o, bus, handle, stream.s, dev, telemetry);
            measure_daxpy(o, handle, stream.s, static_cast<size_t>(prop.l2CacheSize), dev, telemetry);
            if (!o.daxpy_only) measure_dgemm(o, handle, stream.s, dev, telemetry);
        } catch (...) {
            dev.raw("telemetry", telemetry.text());
            throw;
        }
        dev.raw("telemetry", telemetry.text());
    });
}

int cublas_version() {
    int major = 0, minor = 0, patch = 0;
    cublasGetProperty(MAJOR_VERSION, &major);
    cublasGetProperty(MINOR_VERSION, &minor);
    cublasGetProperty(PATCH_LEVEL, &patch);
    return major * 10000 + minor * 100 + patch;
}

}  // namespace

int main(int argc, char** argv) {
    ap::JsonObject out;
    Options o;
    if (int code = ap::start("ap-gpumem", kUsage, argc, argv, parse, o, out); code >= 0) return code;
    out.integer("cublas_version", cublas_version());
    out.integer("elements", o.elements);
    out.integer("samples", o.sampling.samples);
    out.integer("warmup_ms", o.sampling.warmup_ms);
    out.integer("daxpy_iterations", o.daxpy_iters);
    out.integer("dgemm_n", o.dgemm_n);
    out.integer("dgemm_iterations", o.dgemm_iters);
    out.integer("dgemm_seconds", o.dgemm_seconds);
    if (o.daxpy_only) out.raw("daxpy_only", "true");
    if (o.allow_cache) out.raw("cache_sweep", "true");

    return ap::run_devices("ap-gpumem", out, o.device, o.pci_bus_id,
                           [&](int i, ap::JsonObject& dev) { measure(i, o, dev); });
}
