// What ap-bandwidth and ap-gpumem need around a measurement: NVML read through dlopen (telemetry
// from a second thread while the GPU works, PCIe replay and ECC counters before and after, MIG
// mode, NUMA node), pinned memory placed on the GPU's NUMA node, and timed series of samples with
// their median, minimum, maximum and coefficient of variation.
//
// NVML is loaded at run time (libnvidia-ml.so.1 ships with the driver, not the toolkit), so the
// programs build without it and still run, without telemetry, where it cannot be loaded.
#pragma once

#include <dlfcn.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include "common.h"

namespace ap {

// ------------------------------------------------------------------ NVML (dlopen)

struct Nvml {
    using Dev = void*;
    using Ret = int;  // nvmlReturn_t; 0 is NVML_SUCCESS
    void* lib = nullptr;
    bool ok = false;
    std::string why;  // why NVML is not available
    Ret (*init)() = nullptr;
    Ret (*by_bus)(const char*, Dev*) = nullptr;
    Ret (*curr_gen)(Dev, unsigned*) = nullptr;
    Ret (*curr_width)(Dev, unsigned*) = nullptr;
    Ret (*max_gen)(Dev, unsigned*) = nullptr;
    Ret (*max_width)(Dev, unsigned*) = nullptr;
    Ret (*replay)(Dev, unsigned*) = nullptr;
    Ret (*ecc)(Dev, int, int, unsigned long long*) = nullptr;
    Ret (*reasons)(Dev, unsigned long long*) = nullptr;
    Ret (*clock)(Dev, int, unsigned*) = nullptr;
    Ret (*power)(Dev, unsigned*) = nullptr;
    Ret (*temperature)(Dev, int, unsigned*) = nullptr;
    Ret (*mig)(Dev, unsigned*, unsigned*) = nullptr;
    Ret (*numa)(Dev, unsigned*) = nullptr;
    Ret (*set_affinity)(Dev) = nullptr;

    template <typename F>
    void sym(F& f, const char* name, const char* fallback = nullptr) {
        void* p = dlsym(lib, name);
        if (!p && fallback) p = dlsym(lib, fallback);
        f = reinterpret_cast<F>(p);
    }

    Nvml() {
        lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            const char* err = dlerror();
            why = std::string("libnvidia-ml.so.1 not loadable: ") + (err ? err : "unknown reason");
            return;
        }
        sym(init, "nvmlInit_v2");
        sym(by_bus, "nvmlDeviceGetHandleByPciBusId_v2");
        sym(curr_gen, "nvmlDeviceGetCurrPcieLinkGeneration");
        sym(curr_width, "nvmlDeviceGetCurrPcieLinkWidth");
        sym(max_gen, "nvmlDeviceGetMaxPcieLinkGeneration");
        sym(max_width, "nvmlDeviceGetMaxPcieLinkWidth");
        sym(replay, "nvmlDeviceGetPcieReplayCounter");
        sym(ecc, "nvmlDeviceGetTotalEccErrors");
        sym(reasons, "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons");
        sym(clock, "nvmlDeviceGetClockInfo");
        sym(power, "nvmlDeviceGetPowerUsage");
        sym(temperature, "nvmlDeviceGetTemperature");
        sym(mig, "nvmlDeviceGetMigMode");
        sym(numa, "nvmlDeviceGetNumaNodeId");
        sym(set_affinity, "nvmlDeviceSetCpuAffinity");
        if (!init || !by_bus) {
            why = "libnvidia-ml.so.1 lacks nvmlInit_v2 or nvmlDeviceGetHandleByPciBusId_v2";
            return;
        }
        const Ret r = init();
        if (r != 0) {
            why = "nvmlInit_v2 returned " + std::to_string(r);
            return;
        }
        ok = true;
    }
    ~Nvml() = default;  // NVML stays loaded for the life of the process; nvmlShutdown is not needed
    Nvml(const Nvml&) = delete;
    Nvml& operator=(const Nvml&) = delete;

    Dev handle(const std::string& bus) const {
        Dev d = nullptr;
        if (!ok || by_bus(bus.c_str(), &d) != 0) return nullptr;
        return d;
    }
};

inline Nvml& nvml() {
    static Nvml instance;
    return instance;
}

// A reading of `f(dev, &value)` as JSON: the number, or null when NVML has no answer.
template <typename T, typename F, typename... A>
std::string nvml_value(F f, Nvml::Dev dev, A... args) {
    T v{};
    if (!f || !dev || f(dev, args..., &v) != 0) return "null";
    return std::to_string(v);
}

// PCIe replays and ECC errors (volatile: since the driver loaded). Read before and after the
// measurement: growth during it is a hardware finding.
inline std::string counters(Nvml::Dev dev) {
    const Nvml& n = nvml();
    JsonObject c;
    c.raw("pcie_replay", nvml_value<unsigned>(n.replay, dev));
    c.raw("ecc_corrected", nvml_value<unsigned long long>(n.ecc, dev, 0, 0));
    c.raw("ecc_uncorrected", nvml_value<unsigned long long>(n.ecc, dev, 1, 0));
    return c.text();
}

// Link, clocks, power and clock-event reasons read every `period` from a second thread while the
// GPU works, summarised as min/max (reasons: the OR of every mask seen, and how many samples had
// any reason other than idle).
class Telemetry {
  public:
    Telemetry(Nvml::Dev dev, std::chrono::milliseconds period = std::chrono::milliseconds(20))
        : dev_(dev), period_(period) {
        if (dev_) thread_ = std::thread([this] { loop(); });
    }
    ~Telemetry() { stop(); }
    Telemetry(const Telemetry&) = delete;
    Telemetry& operator=(const Telemetry&) = delete;

    std::string finish() {
        stop();
        JsonObject t;
        t.integer("samples", samples_);
        if (samples_ == 0) return t.text();
        for (int i = 0; i < kFields; ++i) {
            if (lo_[i] > hi_[i]) continue;
            JsonObject range;
            range.num("min", lo_[i]);
            range.num("max", hi_[i]);
            t.raw(kNames[i], range.text());
        }
        t.integer("clock_event_reasons_mask", static_cast<long long>(reasons_));
        t.integer("samples_with_clock_events", busy_);
        return t.text();
    }

  private:
    static constexpr int kFields = 8;
    static constexpr const char* kNames[kFields] = {"pcie_gen", "pcie_width",    "sm_clock_mhz", "mem_clock_mhz",
                                                    "power_w",  "temperature_c", "pcie_max_gen", "pcie_max_width"};
    void loop() {
        while (!stop_.load()) {
            take();
            std::this_thread::sleep_for(period_);
        }
        take();
    }
    void put(int i, double v) {
        lo_[i] = std::min(lo_[i], v);
        hi_[i] = std::max(hi_[i], v);
    }
    void take() {
        const Nvml& n = nvml();
        unsigned v = 0;
        if (n.curr_gen && n.curr_gen(dev_, &v) == 0) put(0, v);
        if (n.curr_width && n.curr_width(dev_, &v) == 0) put(1, v);
        if (n.clock && n.clock(dev_, 1, &v) == 0) put(2, v);  // NVML_CLOCK_SM
        if (n.clock && n.clock(dev_, 2, &v) == 0) put(3, v);  // NVML_CLOCK_MEM
        if (n.power && n.power(dev_, &v) == 0) put(4, v / 1000.0);
        if (n.temperature && n.temperature(dev_, 0, &v) == 0) put(5, v);
        if (n.max_gen && n.max_gen(dev_, &v) == 0) put(6, v);
        if (n.max_width && n.max_width(dev_, &v) == 0) put(7, v);
        unsigned long long mask = 0;
        if (n.reasons && n.reasons(dev_, &mask) == 0) {
            reasons_ |= mask;
            if (mask & ~1ULL) ++busy_;  // bit 0 is "GPU idle", not a slowdown
        }
        ++samples_;
    }
    void stop() {
        stop_.store(true);
        if (thread_.joinable()) thread_.join();
    }

    Nvml::Dev dev_;
    std::chrono::milliseconds period_;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    long long samples_ = 0, busy_ = 0;
    unsigned long long reasons_ = 0;
    double lo_[kFields] = {1e300, 1e300, 1e300, 1e300, 1e300, 1e300, 1e300, 1e300};
    double hi_[kFields] = {-1e300, -1e300, -1e300, -1e300, -1e300, -1e300, -1e300, -1e300};
};

// ------------------------------------------------------------------ NUMA placement

inline std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// "0000:19:00.0" (sysfs spelling) from CUDA's or NVML's bus id.
inline std::string sysfs_bus(const std::string& bus) {
    std::string b = lower(bus);
    const auto colon = b.find(':');
    if (colon != std::string::npos && colon > 4) b = b.substr(colon - 4);
    return b;
}

inline bool read_file(const std::string& path, std::string& out) {
    std::ifstream f(path);
    if (!f) return false;
    std::getline(f, out);
    return true;
}

// "0-3,8-11" -> {0,1,2,3,8,9,10,11}; empty on a malformed list.
inline std::vector<int> parse_cpulist(const std::string& text) {
    std::vector<int> cpus;
    std::stringstream ss(text);
    std::string part;
    while (std::getline(ss, part, ',')) {
        if (part.empty() || part == "\n") continue;
        int a = -1, b = -1;
        if (std::sscanf(part.c_str(), "%d-%d", &a, &b) == 2 && a >= 0 && b >= a && b < CPU_SETSIZE) {
            for (int c = a; c <= b; ++c) cpus.push_back(c);
        } else if (std::sscanf(part.c_str(), "%d", &a) == 1 && a >= 0 && a < CPU_SETSIZE) {
            cpus.push_back(a);
        } else {
            return {};
        }
    }
    return cpus;
}

// Binds this thread to the CPUs of the pod's cpuset that are local to the GPU and prefers the
// GPU's NUMA node for new pages, so pinned buffers allocated afterwards sit next to the GPU (as
// nvbandwidth does); restores the previous affinity and policy when it goes out of scope.
class NumaPlacement {
  public:
    int gpu_node = -1;     // -1: the platform reports no node (one socket, or no sysfs)
    bool known = false;    // the GPU's node and local CPUs could be read
    int cpu_local = -1;    // 1: bound to local CPUs; 0: the cpuset has none; -1: unknown
    std::vector<std::string> notes;

    NumaPlacement(const std::string& bus, Nvml::Dev dev) {
        sched_getaffinity(0, sizeof saved_, &saved_);
        const std::string dir = "/sys/bus/pci/devices/" + sysfs_bus(bus);
        std::string node_text, cpus_text;
        if (read_file(dir + "/numa_node", node_text)) {
            gpu_node = std::atoi(node_text.c_str());
            known = true;
        } else {
            notes.push_back("no " + dir + "/numa_node (no sysfs PCI tree here, e.g. gVisor)");
            unsigned n = 0;
            if (nvml().numa && dev && nvml().numa(dev, &n) == 0) {
                gpu_node = static_cast<int>(n);
                known = true;
                notes.push_back("GPU NUMA node from NVML");
            }
        }
        std::vector<int> local;
        if (read_file(dir + "/local_cpulist", cpus_text)) local = parse_cpulist(cpus_text);
        if (local.empty()) {
            // nvbandwidth's way; binds to the GPU's CPUs (NVML does not look at the cpuset first).
            if (nvml().set_affinity && dev && nvml().set_affinity(dev) == 0) {
                cpu_local = 1;
                bound_ = true;  // NVML changed this thread's affinity: restore it afterwards too
                notes.push_back("bound with nvmlDeviceSetCpuAffinity");
            } else {
                notes.push_back("local CPUs of the GPU unknown: not bound");
            }
        } else {
            cpu_set_t want;
            CPU_ZERO(&want);
            int count = 0;
            for (int c : local)
                if (CPU_ISSET(c, &saved_)) {
                    CPU_SET(c, &want);
                    ++count;
                }
            if (count == 0) {
                cpu_local = 0;
                notes.push_back("no CPU of this process's cpuset is local to the GPU (local: " + cpus_text + ")");
            } else if (sched_setaffinity(0, sizeof want, &want) == 0) {
                cpu_local = 1;
                bound_ = true;
            } else {
                notes.push_back(std::string("sched_setaffinity failed: ") + std::strerror(errno));
            }
        }
        if (known && gpu_node >= 0 && gpu_node < 64) {
            unsigned long mask = 1UL << gpu_node;
            // MPOL_PREFERRED = 1: new pages of this thread come from the GPU's node when it has room.
            if (syscall(SYS_set_mempolicy, 1, &mask, 64) == 0) {
                policy_set_ = true;
            } else {
                notes.push_back(std::string("set_mempolicy failed: ") + std::strerror(errno));
            }
        }
    }
    ~NumaPlacement() {
        if (bound_) sched_setaffinity(0, sizeof saved_, &saved_);
        if (policy_set_) syscall(SYS_set_mempolicy, 0, nullptr, 0);  // MPOL_DEFAULT
    }
    NumaPlacement(const NumaPlacement&) = delete;
    NumaPlacement& operator=(const NumaPlacement&) = delete;

    // The NUMA node holding the page at `addr` (MPOL_F_NODE | MPOL_F_ADDR), or -1.
    static int node_of(void* addr) {
        int node = -1;
        if (syscall(SYS_get_mempolicy, &node, nullptr, 0, addr, 3) != 0) return -1;
        return node;
    }

    std::string json(void* host_buffer) const {
        JsonObject o;
        o.raw("gpu_node", known ? std::to_string(gpu_node) : "null");
        const int host = host_buffer ? node_of(host_buffer) : -1;
        o.raw("host_node", host >= 0 ? std::to_string(host) : "null");
        o.raw("cpu_local", cpu_local < 0 ? "null" : (cpu_local ? "true" : "false"));
        std::vector<std::string> n;
        for (const auto& s : notes) n.push_back(json_string(s));
        o.raw("notes", json_array(n));
        return o.text();
    }

  private:
    cpu_set_t saved_{};
    bool bound_ = false;
    bool policy_set_ = false;
};

// ------------------------------------------------------------------ timed series

struct Sampling {
    long long samples = 20;     // timed samples (>= 10)
    long long warmup_ms = 250;  // work before the first sample, to bring the link and clocks up
};

// {"samples":[...],"median":m,"min":a,"max":b,"cv":c}: every sample, and the statistics the
// checks judge on (median) and flag on (cv = standard deviation / mean).
inline std::string series_json(std::vector<double> v) {
    JsonObject o;
    std::vector<std::string> items;
    for (double x : v) items.push_back(json_number(x));
    o.raw("samples", json_array(items));
    if (v.empty()) return o.text();
    std::vector<double> s = v;
    std::sort(s.begin(), s.end());
    const size_t n = s.size();
    const double median = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2.0;
    double mean = 0.0;
    for (double x : s) mean += x;
    mean /= static_cast<double>(n);
    double var = 0.0;
    for (double x : s) var += (x - mean) * (x - mean);
    const double sd = n > 1 ? std::sqrt(var / static_cast<double>(n - 1)) : 0.0;
    o.num("median", median);
    o.num("min", s.front());
    o.num("max", s.back());
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.5f", mean > 0 ? sd / mean : 0.0);
    o.raw("cv", buf);
    return o.text();
}

// Runs `step()` (which queues work on `stream`) until `warmup_ms` have passed, at least once.
template <typename F>
void warm_up(F step, cudaStream_t stream, long long warmup_ms) {
    const auto t0 = std::chrono::steady_clock::now();
    do {
        step();
        AP_CK(cudaStreamSynchronize(stream));
    } while (std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() <
             static_cast<double>(warmup_ms));
}

// GB/s of `copies` back-to-back cudaMemcpyAsync per sample, between two events on `stream`.
inline std::vector<double> copy_series(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                                       cudaStream_t stream, long long copies, const Sampling& o,
                                       double factor = 1.0) {
    auto queue = [&](long long k) {
        for (long long c = 0; c < k; ++c) AP_CK(cudaMemcpyAsync(dst, src, bytes, kind, stream));
    };
    warm_up([&] { queue(1); }, stream, o.warmup_ms);
    std::vector<double> out;
    for (long long s = 0; s < o.samples; ++s) {
        const float ms = time_ms([&] { queue(copies); }, stream);
        out.push_back(gbps(factor * static_cast<double>(bytes) * static_cast<double>(copies), ms));
    }
    return out;
}

inline double median_of(std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

// Everything both programs record around one GPU's measurement: MIG mode (a GPU in MIG mode is
// skipped with the reason: whole-GPU figures mean nothing for an instance), counters before and
// after (also after a failure), and NVML's state. Returns false when the GPU was skipped.
template <typename F>
bool around_device(int index, JsonObject& dev, F measure) {
    char bus[32] = {0};
    AP_CK(cudaDeviceGetPCIBusId(bus, sizeof bus, index));
    Nvml& n = nvml();
    Nvml::Dev handle = n.handle(bus);
    if (!n.ok) dev.str("nvml", n.why);
    unsigned current = 0, pending = 0;
    if (n.mig && handle && n.mig(handle, &current, &pending) == 0 && current == 1) {
        dev.raw("mig", "true");
        dev.str("skipped", "MIG mode is enabled: whole-GPU figures do not apply to an instance");
        return false;
    }
    const std::string before = counters(handle);
    try {
        measure(std::string(bus), handle);
    } catch (...) {
        JsonObject c;
        c.raw("before", before);
        c.raw("after", counters(handle));
        dev.raw("counters", c.text());
        throw;
    }
    JsonObject c;
    c.raw("before", before);
    c.raw("after", counters(handle));
    dev.raw("counters", c.text());
    return true;
}

}  // namespace ap
