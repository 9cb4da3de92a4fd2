"""The OOM classifier against every form an out-of-memory error takes, and errors that only look like one."""

import pytest
import torch

from torchdoctor.oom import classify_oom, is_oom

CUDA = ("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.19 GiB of which "
        "11.75 MiB is free. Of the allocated memory 77.60 GiB is allocated by PyTorch")
CPU = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
       "allocate 85899345920 bytes. Error code 12 (Cannot allocate memory)")


def raised_from(outer_type, inner):
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer_type("wrapped failure") from exc
    except BaseException as exc:  # noqa: BLE001
        return exc


def raised_during(outer_type, inner):
    try:
        try:
            raise inner
        except BaseException:
            raise outer_type("failed while handling")  # noqa: B904 - the implicit __context__ is the point
    except BaseException as exc:  # noqa: BLE001
        return exc


OOMS = {
    "torch.OutOfMemoryError": torch.OutOfMemoryError(CUDA),
    "torch.cuda.OutOfMemoryError": torch.cuda.OutOfMemoryError("CUDA out of memory."),
    "OutOfMemoryError with an unusual message": torch.OutOfMemoryError("allocation failed"),
    "HIP": RuntimeError("HIP out of memory. Tried to allocate 2.00 GiB"),
    "XPU": RuntimeError("XPU out of memory. Tried to allocate 1.00 GiB"),
    "MPS": RuntimeError("MPS backend out of memory (MPS allocated: 17.92 GB, other allocations: 1.00 GB)"),
    "driver AcceleratorError": getattr(torch, "AcceleratorError", RuntimeError)("CUDA error: out of memory\n"
                                                                               "CUDA kernel errors might be..."),
    "cuBLAS": RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    "cuDNN": RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    "CPU allocator": RuntimeError(CPU),
    "several arguments": RuntimeError("step 12 failed", CUDA),
    "raised from an OOM": raised_from(ValueError, torch.OutOfMemoryError(CUDA)),
    "raised while handling an OOM": raised_during(KeyError, RuntimeError(CPU)),
    "torchdoctor budget": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 MiB (torchdoctor "
                                                 "memory budget 1.00 GiB)"),
}
NOT_OOMS = {
    "shape mismatch": RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x32 and 64x10)"),
    "NCCL": RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1269, unhandled cuda error, NCCL version 2.18.1\n"
                         "Last error: Cuda failure 2 'out of memory'"),
    "device-side assert": RuntimeError("CUDA error: device-side assert triggered"),
    "plain ValueError": ValueError("memory is a lovely word"),
    "KeyboardInterrupt": KeyboardInterrupt(),
    "None": None,
}


@pytest.mark.parametrize("name", OOMS)
def test_detects_every_form_of_oom(name):
    assert is_oom(OOMS[name]), name


@pytest.mark.parametrize("name", NOT_OOMS)
def test_no_false_positive(name):
    assert not is_oom(NOT_OOMS[name]), name


def test_reads_the_requested_size():
    assert classify_oom(torch.OutOfMemoryError(CUDA)).requested_bytes == 20 * 1024**2
    assert classify_oom(RuntimeError(CPU)).requested_bytes == 85899345920
    info = classify_oom(RuntimeError("step 12 failed", CUDA))
    assert info.backend == "cuda" and "Tried to allocate 20.00 MiB" in info.message


def test_a_real_cpu_allocator_failure_is_detected():
    # GIVEN a real allocation far beyond what any machine has (the allocator refuses at once)
    with pytest.raises(RuntimeError) as err:
        torch.empty(2**62, dtype=torch.uint8)
    # THEN the classifier sees it as the CPU OOM it is
    info = classify_oom(err.value)
    assert info is not None and info.backend == "cpu"
