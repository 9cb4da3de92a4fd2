// torchdoctor's allocator probe: the c10 CPU allocator's own running figures (bytes it handed out and has not
// taken back, and their peak), kernel-internal buffers included (oneDNN convolution reorders, RNN scratch), which
// no dispatch-level view sees because they are never an op's output.
//
// c10's DefaultCPUAllocator reports every allocation and free to the memory-reporting hook of the thread's profiler
// slot (c10::ThreadLocalDebugInfo, PROFILER_STATE) when that hook wants memory reports: torch.profiler's
// profile_memory=True uses the same path. The probe stands in that slot as a profiler whose config is *disabled*
// (torch sees no profiler running: profilerEnabled() is false, profilerType() is NONE) and only keeps two atomic
// counters. Built once per torch version by torchdoctor/agent/allocator_probe.py and called through ctypes.
#include <torch/csrc/profiler/orchestration/observer.h>
#include <c10/util/ThreadLocalDebugInfo.h>

#include <atomic>
#include <memory>

namespace {
using torch::profiler::impl::ActiveProfilerType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

struct Probe : public torch::profiler::impl::ProfilerStateBase {
  Probe() : ProfilerStateBase(ProfilerConfig(ProfilerState::Disabled, false, true)) {}
  std::atomic<int64_t> current{0};
  std::atomic<int64_t> peak{0};
  std::atomic<int64_t> allocations{0};
  bool memoryProfilingEnabled() const override { return true; }
  ActiveProfilerType profilerType() override { return ActiveProfilerType::NONE; }
  void reportMemoryUsage(void*, int64_t size, size_t, size_t, c10::Device device) override {
    if (device.type() != c10::DeviceType::CPU) return;
    int64_t now = current.fetch_add(size) + size;
    if (size > 0) allocations.fetch_add(1);
    int64_t seen = peak.load();
    while (now > seen && !peak.compare_exchange_weak(seen, now)) {
    }
  }
};

std::shared_ptr<Probe> probe;
}  // namespace

extern "C" {
// 1: this thread's CPU allocations reach the probe (now or already); 0: a profiler holds this thread's slot
int td_attach() {
  auto* slot = c10::ThreadLocalDebugInfo::get(c10::DebugInfoKind::PROFILER_STATE);
  if (slot != nullptr) return probe && slot == probe.get() ? 1 : 0;
  if (!probe) probe = std::make_shared<Probe>();
  c10::ThreadLocalDebugInfo::_push(c10::DebugInfoKind::PROFILER_STATE, probe);
  return 1;
}
// 1: detached from this thread (a profiler may start); 0: it was not attached here
int td_detach() {
  if (!probe || c10::ThreadLocalDebugInfo::get(c10::DebugInfoKind::PROFILER_STATE) != probe.get()) return 0;
  c10::ThreadLocalDebugInfo::_pop(c10::DebugInfoKind::PROFILER_STATE);
  return 1;
}
int64_t td_current() { return probe ? probe->current.load() : -1; }
int64_t td_peak() { return probe ? probe->peak.load() : -1; }
int64_t td_allocations() { return probe ? probe->allocations.load() : -1; }
// the peak starts again from the bytes held now, which it returns
int64_t td_reset_peak() {
  if (!probe) return -1;
  int64_t now = probe->current.load();
  probe->peak.store(now);
  return now;
}
}
