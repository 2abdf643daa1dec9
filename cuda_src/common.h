// Shared by ap-bandwidth and ap-gpumem: CUDA error handling, RAII buffers, argument parsing
// and the tiny JSON writer that produces each program's one line of output.
#pragma once

#include <cuda_runtime.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace ap {

enum ExitCode { EXIT_OK = 0, EXIT_CUDA = 1, EXIT_USAGE = 2, EXIT_NO_DEVICE = 3 };

// A failed CUDA call. Thrown, caught per device, and reported in that device's "error" field so
// one broken GPU does not hide the figures of the others.
// `kind` says whose fault it is, for the checks: "hardware" (the GPU misbehaved: an uncorrectable
// ECC error, our known-good kernel faulting), "lost" (NVML lists the GPU, CUDA cannot open it),
// "setup" (driver, library, memory or permissions), "usage" (a bad request) or "cuda" (other).
struct CudaFailure : std::runtime_error {
    std::string kind = "cuda";
    std::string name;  // cudaGetErrorName, or the cuBLAS status name
    explicit CudaFailure(const std::string& what, std::string k = "cuda", std::string n = "")
        : std::runtime_error(what), kind(std::move(k)), name(std::move(n)) {}
};

// Errors that only a faulty GPU produces while running our own kernels and copies, which are
// known to be correct. (cudaErrorAssert is absent: our kernels assert nothing.)
inline const char* error_kind(cudaError_t err) {
    switch (err) {
        case cudaErrorECCUncorrectable:
        case cudaErrorLaunchFailure:
        case cudaErrorIllegalAddress:
        case cudaErrorHardwareStackError:
        case cudaErrorIllegalInstruction:
        case cudaErrorMisalignedAddress:
        case cudaErrorInvalidPc:
        case cudaErrorLaunchTimeout:
        case cudaErrorNvlinkUncorrectable:
            return "hardware";
        case cudaErrorInsufficientDriver:
        case cudaErrorNoDevice:
        case cudaErrorInitializationError:
        case cudaErrorMemoryAllocation:
        case cudaErrorDevicesUnavailable:
        case cudaErrorNoKernelImageForDevice:
        case cudaErrorUnsupportedPtxVersion:
        case cudaErrorSystemDriverMismatch:
        case cudaErrorCompatNotSupportedOnDevice:
        case cudaErrorNotPermitted:
        case cudaErrorNotSupported:
            return "setup";
        default:
            return "cuda";
    }
}

inline void check(cudaError_t err, const char* call, int line) {
    if (err != cudaSuccess) {
        throw CudaFailure(std::string(call) + ": " + cudaGetErrorString(err) + " (" + cudaGetErrorName(err) +
                              " = " + std::to_string(static_cast<int>(err)) + ", line " + std::to_string(line) + ")",
                          error_kind(err), cudaGetErrorName(err));
    }
}

#define AP_CK(call) ::ap::check((call), #call, __LINE__)

struct DeviceBuffer {
    void* ptr = nullptr;
    explicit DeviceBuffer(size_t bytes) { AP_CK(cudaMalloc(&ptr, bytes)); }
    ~DeviceBuffer() {
        if (ptr) cudaFree(ptr);
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

struct PinnedBuffer {
    void* ptr = nullptr;
    explicit PinnedBuffer(size_t bytes) { AP_CK(cudaMallocHost(&ptr, bytes)); }
    ~PinnedBuffer() {
        if (ptr) cudaFreeHost(ptr);
    }
    PinnedBuffer(const PinnedBuffer&) = delete;
    PinnedBuffer& operator=(const PinnedBuffer&) = delete;
};

struct Event {
    cudaEvent_t ev = nullptr;
    Event() { AP_CK(cudaEventCreate(&ev)); }
    ~Event() {
        if (ev) cudaEventDestroy(ev);
    }
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;
};

struct Stream {
    cudaStream_t s = nullptr;
    // Non-blocking: no implicit synchronisation with the legacy default stream, so nothing
    // another library queues there lands between our events.
    Stream() { AP_CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
    ~Stream() {
        if (s) cudaStreamDestroy(s);
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
};

// Milliseconds between two events recorded on `stream` around `work`, which only queues work on
// that stream: the host waits once, after the stop event, so no host latency is inside.
template <typename F>
float time_ms(F work, cudaStream_t stream = 0) {
    Event start, stop;
    AP_CK(cudaEventRecord(start.ev, stream));
    work();
    AP_CK(cudaEventRecord(stop.ev, stream));
    AP_CK(cudaEventSynchronize(stop.ev));
    float ms = 0.0f;
    AP_CK(cudaEventElapsedTime(&ms, start.ev, stop.ev));
    return ms;
}

// Bytes per second / 1e9: GB/s are decimal gigabytes throughout.
inline double gbps(double bytes, double ms) { return ms > 0.0 ? bytes / (ms * 1e-3) / 1e9 : 0.0; }

inline std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    return out + "\"";
}

inline std::string json_number(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3f", v);
    return buf;
}

// "key": value pairs appended in order; values are already JSON text.
struct JsonObject {
    std::vector<std::pair<std::string, std::string>> fields;
    void raw(const std::string& key, const std::string& json) { fields.emplace_back(key, json); }
    void str(const std::string& key, const std::string& v) { raw(key, json_string(v)); }
    void num(const std::string& key, double v) { raw(key, json_number(v)); }
    void integer(const std::string& key, long long v) { raw(key, std::to_string(v)); }
    std::string text() const {
        std::string out = "{";
        for (size_t i = 0; i < fields.size(); ++i) {
            if (i) out += ",";
            out += json_string(fields[i].first) + ":" + fields[i].second;
        }
        return out + "}";
    }
};

inline std::string json_array(const std::vector<std::string>& items) {
    std::string out = "[";
    for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += ",";
        out += items[i];
    }
    return out + "]";
}

struct UsageFailure : std::runtime_error {
    explicit UsageFailure(const std::string& what) : std::runtime_error(what) {}
};

// The value of "--name VALUE" or "--name=VALUE" at argv[i] (advancing i past a separate VALUE);
// false when argv[i] is another option.
inline bool option_value(int argc, char** argv, int& i, const std::string& flag, std::string& value) {
    const std::string arg = argv[i];
    if (arg == flag) {
        if (i + 1 >= argc) throw UsageFailure(flag + " needs a value");
        value = argv[++i];
        return true;
    }
    if (arg.rfind(flag + "=", 0) == 0) {
        value = arg.substr(flag.size() + 1);
        return true;
    }
    return false;
}

// "--name VALUE" or "--name=VALUE" as an integer within [lo, hi].
inline bool int_option(int argc, char** argv, int& i, const char* name, long long lo, long long hi, long long& out) {
    const std::string flag = name;
    std::string value;
    if (!option_value(argc, argv, i, flag, value)) return false;
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) {
        throw UsageFailure(flag + ": expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                           "], got '" + value + "'");
    }
    out = v;
    return true;
}

// CUDA numbers devices fastest-first by default while NVML (and nvidia-smi) number them by PCI
// bus id; forcing bus-id order makes "--device N" the same GPU as NVML index N on mixed nodes.
inline void use_pci_bus_order() { setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID", 1); }

// Returns the number of CUDA devices, or throws: EXIT_NO_DEVICE situations are reported through
// `no_device` so the caller can print its JSON line with the right exit code.
inline int device_count(std::string& no_device) {
    int driver = 0;
    cudaDriverGetVersion(&driver);
    if (driver == 0) {
        no_device = "no CUDA driver installed (libcuda not found)";
        return 0;
    }
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0)) {
        no_device = "no CUDA device visible";
        return 0;
    }
    AP_CK(err);
    return count;
}

inline void common_header(JsonObject& out, const char* tool) {
    out.str("tool", tool);
    out.integer("version", 2);
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    out.integer("cuda_runtime_version", runtime);
    out.integer("cuda_driver_version", driver);
}

inline void device_identity(JsonObject& dev, int index) {
    cudaDeviceProp prop;
    AP_CK(cudaGetDeviceProperties(&prop, index));
    char bus[32] = {0};
    AP_CK(cudaDeviceGetPCIBusId(bus, sizeof bus, index));
    dev.str("name", prop.name);
    dev.str("pci_bus_id", bus);
}

// The start both programs share: PCI bus order, then `parse(argc, argv, help)` into `o`. Returns
// -1 to go on, with the common header already in `out`; otherwise the exit code to return at once:
// EXIT_USAGE after printing the usage error (to stderr, and as the one JSON line), EXIT_OK after
// printing the usage for --help.
template <typename Options, typename Parse>
int start(const char* tool, const char* usage, int argc, char** argv, Parse parse, Options& o, JsonObject& out) {
    use_pci_bus_order();
    bool help = false;
    try {
        o = parse(argc, argv, help);
    } catch (const UsageFailure& e) {
        std::fprintf(stderr, "%s: %s\n%s", tool, e.what(), usage);
        common_header(out, tool);
        out.str("error", std::string("usage: ") + e.what());
        std::printf("%s\n", out.text().c_str());
        return EXIT_USAGE;
    }
    if (help) {
        std::fprintf(stderr, "%s", usage);
        return EXIT_OK;
    }
    common_header(out, tool);
    return -1;
}

// Measures each GPU (or only `device`, when >= 0, or only the GPU at `pci_bus_id`, when set) with
// `measure(index, dev)`, prints `out` with its "devices" and "errors" as the one JSON line, and
// returns the exit code (see README.md). A CUDA error on one GPU is recorded on that GPU, with its
// "error_kind" and "error_name", and the others are still measured.
template <typename Measure>
int run_devices(const char* tool, JsonObject& out, long long device, const std::string& pci_bus_id, Measure measure) {
    std::vector<std::string> devices, errors;
    int code = EXIT_OK;
    try {
        std::string no_device;
        const int count = device_count(no_device);
        if (count == 0) {
            out.raw("devices", "[]");
            out.str("error", no_device);
            std::printf("%s\n", out.text().c_str());
            return EXIT_NO_DEVICE;
        }
        if (!pci_bus_id.empty()) {
            // The GPU NVML knows by this bus id; CUDA's own numbering is never trusted to match.
            int found = -1;
            const cudaError_t err = cudaDeviceGetByPCIBusId(&found, pci_bus_id.c_str());
            if (err != cudaSuccess) {
                JsonObject dev;
                dev.str("pci_bus_id", pci_bus_id);
                const std::string what = std::string("CUDA cannot open the GPU at ") + pci_bus_id + ": " +
                                         cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
                dev.str("error", what);
                dev.str("error_kind", "lost");
                dev.str("error_name", cudaGetErrorName(err));
                out.raw("devices", json_array({dev.text()}));
                out.raw("errors", json_array({json_string(what)}));
                out.str("error", what);
                std::printf("%s\n", out.text().c_str());
                return EXIT_CUDA;
            }
            device = found;
        }
        if (device >= count) {
            std::fprintf(stderr, "%s: --device %lld: only %d device(s)\n", tool, device, count);
            out.raw("devices", "[]");
            out.str("error", "usage: --device " + std::to_string(device) + " out of range (" +
                                 std::to_string(count) + " device(s))");
            std::printf("%s\n", out.text().c_str());
            return EXIT_USAGE;
        }
        for (int i = 0; i < count; ++i) {
            if (device >= 0 && i != device) continue;
            JsonObject dev;
            dev.integer("index", i);
            try {
                measure(i, dev);
            } catch (const CudaFailure& e) {
                dev.str("error", e.what());
                dev.str("error_kind", e.kind);
                if (!e.name.empty()) dev.str("error_name", e.name);
                errors.push_back(json_string("device " + std::to_string(i) + ": " + e.what()));
                code = EXIT_CUDA;
            } catch (const std::exception& e) {
                // Not CUDA's (a host allocation, a thread that would not start): still one JSON line.
                dev.str("error", std::string("host: ") + e.what());
                dev.str("error_kind", "setup");
                errors.push_back(json_string("device " + std::to_string(i) + ": host: " + e.what()));
                code = EXIT_CUDA;
            }
            devices.push_back(dev.text());
            // Frees whatever a failed measurement left behind before the next device.
            cudaDeviceReset();
        }
    } catch (const CudaFailure& e) {
        out.str("error", e.what());
        out.str("error_kind", e.kind);
        code = EXIT_CUDA;
    }
    out.raw("devices", json_array(devices));
    out.raw("errors", json_array(errors));
    // The documented contract: a CUDA error always shows in a top-level "error".
    bool has_error = false;
    for (const auto& f : out.fields) has_error = has_error || f.first == "error";
    if (code == EXIT_CUDA && !has_error) out.str("error", std::to_string(errors.size()) + " device(s) failed");
    std::printf("%s\n", out.text().c_str());
    return code;
}

// "--name VALUE" or "--name=VALUE" as a string matching `allowed` characters, at most 64 long.
inline bool str_option(int argc, char** argv, int& i, const char* name, const char* allowed, std::string& out) {
    const std::string flag = name;
    std::string value;
    if (!option_value(argc, argv, i, flag, value)) return false;
    if (value.empty() || value.size() > 64 || value.find_first_not_of(allowed) != std::string::npos) {
        throw UsageFailure(flag + ": unexpected value '" + value + "'");
    }
    out = value;
    return true;
}

inline constexpr const char* kBusIdChars = "0123456789abcdefABCDEF:.";

}  // namespace ap
