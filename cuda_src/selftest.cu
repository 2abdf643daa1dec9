// ap-selftest: the host-side rules of common.h and measure.h, run without a GPU (CI has none):
// the CUDA error kinds, the sample statistics, the cpulist and bus-id parsing. Prints one JSON
// line for tests/unit/test_cuda_build.py to check; exit 0.
#include "measure.h"

namespace {

std::string kinds() {
    ap::JsonObject o;
    const std::pair<const char*, cudaError_t> errors[] = {
        {"cudaErrorECCUncorrectable", cudaErrorECCUncorrectable},
        {"cudaErrorLaunchFailure", cudaErrorLaunchFailure},
        {"cudaErrorIllegalAddress", cudaErrorIllegalAddress},
        {"cudaErrorMemoryAllocation", cudaErrorMemoryAllocation},
        {"cudaErrorInsufficientDriver", cudaErrorInsufficientDriver},
        {"cudaErrorNoKernelImageForDevice", cudaErrorNoKernelImageForDevice},
        {"cudaErrorInvalidValue", cudaErrorInvalidValue},
    };
    for (const auto& e : errors) o.str(e.first, ap::error_kind(e.second));
    return o.text();
}

std::string failure() {
    try {
        AP_CK(cudaErrorECCUncorrectable);
    } catch (const ap::CudaFailure& e) {
        ap::JsonObject o;
        o.str("kind", e.kind);
        o.str("name", e.name);
        return o.text();
    }
    return "null";
}

std::string cpulist(const char* text) {
    std::vector<std::string> items;
    for (int c : ap::parse_cpulist(text)) items.push_back(std::to_string(c));
    return ap::json_array(items);
}

}  // namespace

int main() {
    ap::JsonObject out;
    out.str("tool", "ap-selftest");
    out.raw("error_kinds", kinds());
    out.raw("failure", failure());
    out.raw("series", ap::series_json({10.0, 12.0, 11.0, 30.0}));
    out.raw("series_one", ap::series_json({5.0}));
    out.raw("cpulist", cpulist("0-3,8,10-11"));
    out.raw("cpulist_bad", cpulist("0-3,x"));
    out.str("sysfs_bus_nvml", ap::sysfs_bus("00000000:3B:00.0"));
    out.str("sysfs_bus_cuda", ap::sysfs_bus("0000:3B:00.0"));
    std::printf("%s\n", out.text().c_str());
    return 0;
}
