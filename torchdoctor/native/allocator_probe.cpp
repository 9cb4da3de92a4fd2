// torchdoctor's allocator probe: the CPU allocator's own running figures (bytes handed out and not taken back, their
// peak, and what they are by kind), kernel-internal buffers included (oneDNN convolution reorders, RNN workspaces),
// which no dispatch-level view sees because they are never an op's output.
//
// The probe is a thin c10::Allocator put in front of the CPU allocator torch was using (c10::SetCPUAllocator): every
// allocation is asked of that allocator with a 64-byte header in front (alignment kept), in which the probe writes
// the bytes asked for, the category the allocation is born as (the phase it was made in, set from Python) and a
// sequence number; its deleter reads them back. So every CPU allocation made through torch is counted once, freed or
// not, on every thread, with no lookup table, and a storage can be re-classified later (a gradient, optimizer state)
// from its StorageImpl, also in the breakdown recorded at the peak when it was alive then. Allocations made before
// the probe was put in place keep their own deleter: the probe sees neither their birth nor their death.
//
// Built once per torch version by torchdoctor/agent/memory/allocator_probe.py and called through ctypes.
#include <c10/core/CPUAllocator.h>
#include <c10/core/StorageImpl.h>

#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>

namespace {
constexpr size_t kHeader = 64;  // c10's CPU alignment: the data after the header stays 64-byte aligned
constexpr int kCats = 8;
constexpr int kPhases = 8;
constexpr int64_t kMagic = 0x74646f63746f7221;  // "tdoctor!"

struct Header {
  int64_t magic;
  int64_t nbytes;
  int64_t seq;
  int64_t cat;
};
static_assert(sizeof(Header) <= kHeader, "header too large");

struct Ledger {
  std::mutex mu;
  std::atomic<int64_t> current{0};
  std::atomic<int64_t> peak{0};
  int64_t seq = 0;
  int64_t peak_seq = 0;
  int peak_phase = 0;
  int64_t allocations = 0;
  int64_t cats[kCats] = {};
  int64_t peak_cats[kCats] = {};
  int64_t phase_peaks[kPhases] = {};
  int phase = 0;
  int birth_cat = 0;
};

Ledger ledger;
c10::Allocator* inner = nullptr;
c10::DeleterFnPtr inner_delete = nullptr;

void counted_delete(void* ptr);

// The inner allocator's error with the size the script asked for, not the one the probe asked (64 bytes more).
std::string restated(const c10::Error& error, size_t n) {
  std::string message = error.what_without_backtrace();
  std::string asked = std::to_string(n + kHeader);
  size_t at = message.find(asked);
  if (at != std::string::npos) message.replace(at, asked.size(), std::to_string(n));
  return message;
}

// Under ledger.mu: the peak moves with the bytes held; the phase's peak too.
void note_height(int64_t now) {
  if (now > ledger.phase_peaks[ledger.phase]) ledger.phase_peaks[ledger.phase] = now;
  if (now > ledger.peak.load(std::memory_order_relaxed)) {
    ledger.peak.store(now, std::memory_order_relaxed);
    ledger.peak_seq = ledger.seq;
    ledger.peak_phase = ledger.phase;
    std::memcpy(ledger.peak_cats, ledger.cats, sizeof(ledger.cats));
  }
}

// Under ledger.mu: the peak starts again from the bytes held now.
void restart_peak() {
  ledger.peak.store(ledger.current.load(std::memory_order_relaxed), std::memory_order_relaxed);
  ledger.peak_seq = ledger.seq;
  ledger.peak_phase = ledger.phase;
  std::memcpy(ledger.peak_cats, ledger.cats, sizeof(ledger.cats));
}

struct CountingAllocator final : public c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, nullptr, &counted_delete, c10::Device(c10::DeviceType::CPU)};
    char* base = nullptr;
    try {
      base = static_cast<char*>(inner->raw_allocate(n + kHeader));
    } catch (const c10::OutOfMemoryError& error) {
      throw c10::OutOfMemoryError({__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, restated(error, n));
    } catch (const c10::Error& error) {
      throw c10::Error({__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, restated(error, n));
    }
    auto* header = reinterpret_cast<Header*>(base);
    char* data = base + kHeader;
    {
      std::lock_guard<std::mutex> guard(ledger.mu);
      header->magic = kMagic;
      header->nbytes = static_cast<int64_t>(n);
      header->seq = ++ledger.seq;
      header->cat = ledger.birth_cat;
      ledger.allocations++;
      ledger.cats[header->cat] += header->nbytes;
      int64_t now = ledger.current.load(std::memory_order_relaxed) + header->nbytes;
      ledger.current.store(now, std::memory_order_relaxed);
      note_height(now);
    }
    return {data, data, &counted_delete, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &counted_delete; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
};

CountingAllocator counting;

void counted_delete(void* ptr) {
  if (ptr == nullptr) return;
  char* base = static_cast<char*>(ptr) - kHeader;
  auto* header = reinterpret_cast<Header*>(base);
  {
    std::lock_guard<std::mutex> guard(ledger.mu);
    ledger.cats[header->cat] -= header->nbytes;
    ledger.current.fetch_sub(header->nbytes, std::memory_order_relaxed);
    header->magic = 0;
  }
  inner_delete(base);
}

// A fork while another thread holds the lock would leave the child's lock held for ever (a DataLoader worker's first
// allocation would hang): the lock is taken around fork and let go on both sides.
void before_fork() { ledger.mu.lock(); }
void after_fork() { ledger.mu.unlock(); }
}  // namespace

extern "C" {
// 1: the CPU allocator is the probe from now on (or already was); 0: torch kept another allocator (none is wrapped)
int td_install() {
  c10::Allocator* now = c10::GetCPUAllocator();
  if (now == &counting) return 1;
  if (now == nullptr || now->raw_deleter() == nullptr) return 0;
  if (inner == nullptr) pthread_atfork(before_fork, after_fork, after_fork);
  inner = now;
  inner_delete = now->raw_deleter();
  {
    std::lock_guard<std::mutex> guard(ledger.mu);
    for (auto& p : ledger.phase_peaks) p = -1;
  }
  c10::SetCPUAllocator(&counting, /*priority=*/0);
  return c10::GetCPUAllocator() == &counting ? 1 : 0;
}
// torch's own CPU allocator again for new allocations; those the probe made are still counted when freed
int td_uninstall() {
  if (c10::GetCPUAllocator() != &counting || inner == nullptr) return 0;
  c10::SetCPUAllocator(inner, /*priority=*/0);
  return 1;
}
int64_t td_current() { return ledger.current.load(std::memory_order_relaxed); }
int64_t td_peak() { return ledger.peak.load(std::memory_order_relaxed); }
int64_t td_allocations() {
  std::lock_guard<std::mutex> guard(ledger.mu);
  return ledger.allocations;
}
// the peak (and each phase's) starts again from the bytes held now, which it returns
int64_t td_reset_peak() {
  std::lock_guard<std::mutex> guard(ledger.mu);
  restart_peak();
  int64_t now = ledger.current.load(std::memory_order_relaxed);
  for (auto& p : ledger.phase_peaks) p = -1;
  ledger.phase_peaks[ledger.phase] = now;
  return now;
}
// A height that never was (an op the memory budget failed: a real allocator would have refused it): the peak, and
// the running phase's, go back to `before` (what the span held at most before that op) or what is held now.
void td_forget_height(int64_t before) {
  std::lock_guard<std::mutex> guard(ledger.mu);
  int64_t now = ledger.current.load(std::memory_order_relaxed);
  int64_t keep = before > now ? before : now;
  if (ledger.peak.load(std::memory_order_relaxed) > keep) {
    restart_peak();
    ledger.peak.store(keep, std::memory_order_relaxed);
  }
  if (ledger.phase_peaks[ledger.phase] > keep) ledger.phase_peaks[ledger.phase] = keep;
}
// what runs from now on (an index into the Python side's phases) and the category its allocations are born as
void td_set_phase(int phase, int birth_cat) {
  if (phase < 0 || phase >= kPhases || birth_cat < 0 || birth_cat >= kCats) return;
  std::lock_guard<std::mutex> guard(ledger.mu);
  ledger.phase = phase;
  ledger.birth_cat = birth_cat;
  int64_t now = ledger.current.load(std::memory_order_relaxed);
  if (now > ledger.phase_peaks[phase]) ledger.phase_peaks[phase] = now;
}
// Re-classify the allocations behind these storages (c10::StorageImpl*, Python's untyped_storage()._cdata) as
// `cat` (only those now `only_from`, unless it is -1), in the breakdown at the peak too when they were born before
// it. Storages the probe did not allocate are left alone. Returns their bytes.
int64_t td_classify(const int64_t* storages, int64_t count, int cat, int only_from) {
  if (cat < 0 || cat >= kCats) return 0;
  int64_t moved = 0;
  std::lock_guard<std::mutex> guard(ledger.mu);
  for (int64_t i = 0; i < count; ++i) {
    auto* storage = reinterpret_cast<c10::StorageImpl*>(storages[i]);
    if (storage == nullptr) continue;
    const c10::DataPtr& data = storage->data_ptr();
    if (data.get_deleter() != &counted_delete || data.get() == nullptr) continue;
    auto* header = reinterpret_cast<Header*>(static_cast<char*>(data.get()) - kHeader);
    if (header->magic != kMagic) continue;
    if (only_from >= 0 && header->cat != only_from) continue;
    moved += header->nbytes;
    if (header->cat == cat) continue;
    ledger.cats[header->cat] -= header->nbytes;
    ledger.cats[cat] += header->nbytes;
    if (header->seq <= ledger.peak_seq) {
      ledger.peak_cats[header->cat] -= header->nbytes;
      ledger.peak_cats[cat] += header->nbytes;
    }
    header->cat = cat;
  }
  return moved;
}
// The bytes of each storage's allocation when the probe made it, else -1 (made before the probe, or elsewhere).
void td_owned(const int64_t* storages, int64_t count, int64_t* out) {
  std::lock_guard<std::mutex> guard(ledger.mu);
  for (int64_t i = 0; i < count; ++i) {
    out[i] = -1;
    auto* storage = reinterpret_cast<c10::StorageImpl*>(storages[i]);
    if (storage == nullptr) continue;
    const c10::DataPtr& data = storage->data_ptr();
    if (data.get_deleter() != &counted_delete || data.get() == nullptr) continue;
    auto* header = reinterpret_cast<Header*>(static_cast<char*>(data.get()) - kHeader);
    if (header->magic == kMagic) out[i] = header->nbytes;
  }
}
// All figures at once: current, peak, allocations, the phase of the peak, then kCats categories now, kCats at the peak, kPhases phase
// peaks (-1: the phase did not run since the peak was reset). Returns how many were written.
int td_read(int64_t* out, int size) {
  constexpr int kCount = 4 + 2 * kCats + kPhases;
  if (size < kCount) return 0;
  std::lock_guard<std::mutex> guard(ledger.mu);
  out[0] = ledger.current.load(std::memory_order_relaxed);
  out[1] = ledger.peak.load(std::memory_order_relaxed);
  out[2] = ledger.allocations;
  out[3] = ledger.peak_phase;
  std::memcpy(out + 4, ledger.cats, sizeof(ledger.cats));
  std::memcpy(out + 4 + kCats, ledger.peak_cats, sizeof(ledger.peak_cats));
  std::memcpy(out + 4 + 2 * kCats, ledger.phase_peaks, sizeof(ledger.phase_peaks));
  return kCount;
}
}
