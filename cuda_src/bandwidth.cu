// ap-bandwidth: host<->device and device-to-device copy bandwidth of each GPU, as one JSON line.
//
// Usage: ap-bandwidth [--device N | --pci-bus-id B] [--size-mib M] [--samples S] [--copies K]
//                     [--warmup-ms W] [--help]
//   --device N      measure only CUDA device N (numbered in PCI bus order, like NVML); default all
//   --pci-bus-id B  measure only the GPU at PCI bus id B (as NVML spells it), found with
//                   cudaDeviceGetByPCIBusId; a GPU CUDA cannot open there is reported "lost"
//   --size-mib M    bytes per copy, in MiB (default 256)
//   --samples S     timed samples per direction, at least 10 (default 20)
//   --copies K      cudaMemcpyAsync per sample (default 4)
//   --warmup-ms W   copies before the first sample, at least 200 ms (default 250)
//
// Before allocating, the thread is bound to the CPUs local to the GPU (sysfs local_cpulist
// intersected with the process's cpuset, else nvmlDeviceSetCpuAffinity) and prefers the GPU's
// NUMA node, so the pinned buffer sits next to the GPU; "numa" reports the GPU's node, the node
// that holds the buffer and whether a local CPU was available. Each sample is one start event,
// K cudaMemcpyAsync of M MiB on a non-blocking stream, one stop event. GB/s are decimal (1e9
// bytes per second); d2d counts bytes read plus bytes written (2 x size per copy), as NVIDIA's
// bandwidthTest does. While the copies run a second thread reads NVML every 20 ms ("telemetry"
// per direction); PCIe replay and ECC counters are read before and after ("counters").
//
// Output (stdout, exactly one line; figures illustrative):
//   {"tool":"ap-bandwidth","version":2,"cuda_runtime_version":13000,"cuda_driver_version":13000,
//    "size_bytes":268435456,"samples":20,"copies":4,"warmup_ms":250,"devices":[{"index":0,
//    "name":"NVIDIA H200","pci_bus_id":"00000000:19:00.0","numa":{"gpu_node":0,"host_node":0,
//    "cpu_local":true,"notes":[]},"h2d":{"samples":[55.1,...],"median":55.1,"min":54.9,"max":55.2,
//    "cv":0.00120},"d2h":{...},"d2d":{...},"h2d_pinned_gbps":55.1,"d2h_pinned_gbps":55.3,
//    "d2d_gbps":3900.2,"telemetry":{"h2d":{"samples":40,"pcie_gen":{"min":5,"max":5},...}},
//    "counters":{"before":{"pcie_replay":0,"ecc_corrected":0,"ecc_uncorrected":0},"after":{...}}}],
//    "errors":[]}
// A device that failed carries "error", "error_kind" (hardware, lost, setup, usage, cuda) and
// "error_name"; a GPU in MIG mode carries "mig":true and "skipped" instead of figures.
//
// Exit codes:
//   0  every requested device was measured (or skipped for MIG)
//   1  a CUDA error (the JSON line is still printed, with an "error" field)
//   2  usage error (bad option or device index)
//   3  no CUDA device or no driver
#include "measure.h"

namespace {

const char* kUsage =
    "usage: ap-bandwidth [--device N | --pci-bus-id B] [--size-mib M] [--samples S] [--copies K]\n"
    "                    [--warmup-ms W] [--help]\n"
    "Prints one JSON line of host<->device and device-to-device bandwidth (GB/s = 1e9 bytes/s).\n"
    "Exit codes: 0 ok, 1 CUDA error, 2 usage, 3 no CUDA device.\n";

struct Options {
    long long device = -1;
    std::string pci_bus_id;
    long long size_mib = 256;
    long long copies = 4;
    ap::Sampling sampling;
};

Options parse(int argc, char** argv, bool& help) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            help = true;
        } else if (ap::int_option(argc, argv, i, "--device", 0, 1023, o.device) ||
                   ap::str_option(argc, argv, i, "--pci-bus-id", ap::kBusIdChars, o.pci_bus_id) ||
                   ap::int_option(argc, argv, i, "--size-mib", 1, 65536, o.size_mib) ||
                   ap::int_option(argc, argv, i, "--samples", 10, 10000, o.sampling.samples) ||
                   ap::int_option(argc, argv, i, "--copies", 1, 1000, o.copies) ||
                   ap::int_option(argc, argv, i, "--warmup-ms", 200, 600000, o.sampling.warmup_ms)) {
        } else {
            throw ap::UsageFailure("unknown option '" + arg + "'");
        }
    }
    if (o.device >= 0 && !o.pci_bus_id.empty()) throw ap::UsageFailure("--device and --pci-bus-id exclude each other");
    return o;
}

void measure(int index, const Options& o, ap::JsonObject& dev) {
    AP_CK(cudaSetDevice(index));
    ap::device_identity(dev, index);
    ap::around_device(index, dev, [&](const std::string& bus, ap::Nvml::Dev handle) {
        const size_t bytes = static_cast<size_t>(o.size_mib) << 20;
        ap::Stream stream;
        ap::DeviceBuffer d_a(bytes), d_b(bytes);
        ap::JsonObject telemetry;
        {
            // Placement first: cudaMallocHost pins pages this thread faults in, on its node.
            ap::NumaPlacement numa(bus, handle);
            ap::PinnedBuffer pinned(bytes);
            std::memset(pinned.ptr, 1, bytes);
            dev.raw("numa", numa.json(pinned.ptr));
            std::vector<double> h2d, d2h;
            {
                ap::Telemetry t(handle);
                h2d = ap::copy_series(d_a.ptr, pinned.ptr, bytes, cudaMemcpyHostToDevice, stream.s, o.copies,
                                      o.sampling);
                telemetry.raw("h2d", t.finish());
            }
            {
                ap::Telemetry t(handle);
                d2h = ap::copy_series(pinned.ptr, d_a.ptr, bytes, cudaMemcpyDeviceToHost, stream.s, o.copies,
                                      o.sampling);
                telemetry.raw("d2h", t.finish());
            }
            dev.raw("h2d", ap::series_json(h2d));
            dev.raw("d2h", ap::series_json(d2h));
            dev.num("h2d_pinned_gbps", ap::median_of(h2d));
            dev.num("d2h_pinned_gbps", ap::median_of(d2h));
        }
        std::vector<double> d2d;
        {
            ap::Telemetry t(handle);
            d2d = ap::copy_series(d_b.ptr, d_a.ptr, bytes, cudaMemcpyDeviceToDevice, stream.s, o.copies, o.sampling,
                                  2.0);
            telemetry.raw("d2d", t.finish());
        }
        dev.raw("d2d", ap::series_json(d2d));
        dev.num("d2d_gbps", ap::median_of(d2d));
        dev.raw("telemetry", telemetry.text());
    });
}

}  // namespace

int main(int argc, char** argv) {
    ap::JsonObject out;
    Options o;
    if (int code = ap::start("ap-bandwidth", kUsage, argc, argv, parse, o, out); code >= 0) return code;
    out.integer("size_bytes", o.size_mib << 20);
    out.integer("samples", o.sampling.samples);
    out.integer("copies", o.copies);
    out.integer("warmup_ms", o.sampling.warmup_ms);

    return ap::run_devices("ap-bandwidth", out, o.device, o.pci_bus_id,
                           [&](int i, ap::JsonObject& dev) { measure(i, o, dev); });
}
