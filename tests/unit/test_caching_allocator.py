"""The CUDA caching-allocator model against the rules of torch's allocator (c10/cuda/CUDACachingAllocator.cpp),
worked by hand."""

from torchdoctor.agent.estimate.caching_allocator import CachingAllocatorModel, round_size, segment_size

MiB = 1 << 20


def test_sizes_round_to_512_bytes_and_segments_follow_the_pools():
    assert [round_size(n) for n in (1, 511, 512, 513, 4000)] == [512, 512, 512, 1024, 4096]
    assert segment_size(512) == segment_size(MiB) == 2 * MiB  # small pool
    assert segment_size(MiB + 512) == segment_size(10 * MiB - 512) == 20 * MiB  # 1 to 10 MiB: a 20 MiB segment
    assert segment_size(10 * MiB) == 10 * MiB and segment_size(11 * MiB + 1) == 12 * MiB  # rounded to 2 MiB


def test_small_requests_share_a_2_mib_segment_and_a_zero_byte_request_takes_nothing():
    model = CachingAllocatorModel()
    assert model.malloc(0) is None
    blocks = [model.malloc(1000) for _ in range(4)]
    assert model.allocated == 4 * 1024 and model.reserved == 2 * MiB and model.segments == 1
    model.malloc(2 * MiB - 4 * 1024 + 1)  # over 1 MiB: the large pool, its own 20 MiB segment
    assert model.reserved == 22 * MiB
    for block in blocks:
        model.free(block)
    assert model.allocated == 2 * MiB - 4 * 1024 + 512  # the large block, rounded up to 512
    again = model.malloc(2048)  # the freed small blocks merged back: reused, no new segment
    assert model.reserved == 22 * MiB and again is not None and again.addr == blocks[0].addr


def test_a_large_block_is_split_only_when_more_than_1_mib_would_remain():
    model = CachingAllocatorModel()
    a = model.malloc(3 * MiB)  # 20 MiB segment, split: 3 MiB used, 17 MiB cached
    assert model.reserved == 20 * MiB and model.allocated == 3 * MiB
    b = model.malloc(16 * MiB + 512)  # 17 MiB free block, 1 MiB - 512 would remain: not split, all of it counted
    assert model.reserved == 20 * MiB and b is not None and b.size == 17 * MiB
    assert model.allocated == 20 * MiB and model.peak_allocated == 20 * MiB
    model.free(a)
    model.free(b)
    assert model.allocated == 0 and model.reserved == 20 * MiB  # segments stay reserved
    c = model.malloc(12 * MiB)  # best fit in the merged 20 MiB block: split, 8 MiB left
    d = model.malloc(9 * MiB)  # 8 MiB is too small: a new 20 MiB segment
    assert c is not None and d is not None and model.reserved == 40 * MiB and model.segments == 2


def test_the_smallest_fitting_block_is_taken_and_peaks_reset_to_what_is_held():
    model = CachingAllocatorModel()
    big = model.malloc(30 * MiB)
    small = model.malloc(12 * MiB)
    model.free(big)
    model.free(small)
    model.reset_peaks()
    assert model.peak_allocated == 0 and model.peak_reserved == 42 * MiB
    got = model.malloc(11 * MiB)  # the 12 MiB block, not the 30 MiB one (1 MiB remains: not split)
    assert got is not None and got.size == 12 * MiB and model.reserved == 42 * MiB
