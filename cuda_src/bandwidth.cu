// ap-bandwidth: host<->device and device-to-device copy bandwidth of each GPU, as one JSON line.
//
// Usage: ap-bandwidth [--device N] [--size-mib M] [--runs R] [--plain] [--help]
//   --device N    measure only CUDA device N (numbered in PCI bus order, like NVML); default all
//   --size-mib M  bytes per transfer, in MiB (default 256)
//   --runs R      timed copies per figure; the best one is reported (default 5)
//   --plain       also time a plain loop of pinned cudaMemcpy calls with the host clock
//                 ("h2d_plain_gbps"), a reference for what the event-timed figure should reach
//
// Each figure is the best of R copies of M MiB after one untimed warm-up copy, timed with CUDA
// events. GB/s are decimal: 1e9 bytes per second. d2d_gbps counts bytes read plus bytes written
// (2 x size per copy), as NVIDIA's bandwidthTest does, so it is comparable to a memory bandwidth.
//
// Output (stdout, exactly one line):
//   {"tool":"ap-bandwidth","version":1,"cuda_runtime_version":13000,"cuda_driver_version":13000,
//    "size_bytes":268435456,"runs":5,"devices":[{"index":0,"name":"NVIDIA H200",
//    "pci_bus_id":"00000000:19:00.0","h2d_pinned_gbps":55.1,"h2d_pageable_gbps":20.3,
//    "d2h_pinned_gbps":55.4,"d2h_pageable_gbps":18.7,"d2d_gbps":3900.2}],"errors":[]}
// A device that failed carries an "error" string instead of (some of) its figures, and the
// message is repeated in "errors"; a failure outside any device sets the top-level "error".
//
// Exit codes:
//   0  every requested device was measured
//   1  a CUDA error (the JSON line is still printed, with an "error" field)
//   2  usage error (bad option or device index)
//   3  no CUDA device or no driver
#include <chrono>

#include "common.h"

namespace {

const char* kUsage =
    "usage: ap-bandwidth [--device N] [--size-mib M] [--runs R] [--plain] [--help]\n"
    "Prints one JSON line of host<->device and device-to-device bandwidth (GB/s = 1e9 bytes/s).\n"
    "Exit codes: 0 ok, 1 CUDA error, 2 usage, 3 no CUDA device.\n";

struct Options {
    long long device = -1;
    long long size_mib = 256;
    long long runs = 5;
    bool plain = false;
};

Options parse(int argc, char** argv, bool& help) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            help = true;
        } else if (arg == "--plain") {
            o.plain = true;
        } else if (ap::int_option(argc, argv, i, "--device", 0, 1023, o.device) ||
                   ap::int_option(argc, argv, i, "--size-mib", 1, 65536, o.size_mib) ||
                   ap::int_option(argc, argv, i, "--runs", 1, 1000, o.runs)) {
        } else {
            throw ap::UsageFailure("unknown option '" + arg + "'");
        }
    }
    return o;
}

// Best GB/s over `runs` copies, after one warm-up copy that is not counted.
double best_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, long long runs, double factor = 1.0) {
    AP_CK(cudaMemcpy(dst, src, bytes, kind));
    double best = 0.0;
    for (long long r = 0; r < runs; ++r) {
        const float ms = ap::time_ms([&] { AP_CK(cudaMemcpy(dst, src, bytes, kind)); });
        const double v = ap::gbps(factor * static_cast<double>(bytes), ms);
        if (v > best) best = v;
    }
    return best;
}

// What a naive program sees: back-to-back pinned copies timed by the host clock.
double plain_loop(void* dst, const void* src, size_t bytes, long long runs) {
    AP_CK(cudaDeviceSynchronize());
    const auto t0 = std::chrono::steady_clock::now();
    for (long long r = 0; r < runs; ++r) AP_CK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    AP_CK(cudaDeviceSynchronize());
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return ap::gbps(static_cast<double>(bytes) * static_cast<double>(runs), ms);
}

void measure(int index, const Options& o, ap::JsonObject& dev) {
    AP_CK(cudaSetDevice(index));
    ap::device_identity(dev, index);
    const size_t bytes = static_cast<size_t>(o.size_mib) << 20;
    ap::DeviceBuffer d_a(bytes), d_b(bytes);
    {
        ap::PinnedBuffer pinned(bytes);
        std::memset(pinned.ptr, 1, bytes);
        dev.num("h2d_pinned_gbps", best_copy(d_a.ptr, pinned.ptr, bytes, cudaMemcpyHostToDevice, o.runs));
        dev.num("d2h_pinned_gbps", best_copy(pinned.ptr, d_a.ptr, bytes, cudaMemcpyDeviceToHost, o.runs));
        if (o.plain) dev.num("h2d_plain_gbps", plain_loop(d_a.ptr, pinned.ptr, bytes, o.runs));
    }
    {
        ap::PageableBuffer pageable(bytes);
        dev.num("h2d_pageable_gbps", best_copy(d_a.ptr, pageable.ptr, bytes, cudaMemcpyHostToDevice, o.runs));
        dev.num("d2h_pageable_gbps", best_copy(pageable.ptr, d_a.ptr, bytes, cudaMemcpyDeviceToHost, o.runs));
    }
    dev.num("d2d_gbps", best_copy(d_b.ptr, d_a.ptr, bytes, cudaMemcpyDeviceToDevice, o.runs, 2.0));
}

}  // namespace

int main(int argc, char** argv) {
    ap::JsonObject out;
    Options o;
    if (int code = ap::start("ap-bandwidth", kUsage, argc, argv, parse, o, out); code >= 0) return code;
    out.integer("size_bytes", o.size_mib << 20);
    out.integer("runs", o.runs);
    if (o.plain) out.raw("plain", "true");

    return ap::run_devices("ap-bandwidth", out, o.device, [&](int i, ap::JsonObject& dev) { measure(i, o, dev); });
}
