"""Running out of memory reads as out of memory, on the CPU as on a GPU."""

from __future__ import annotations

import pytest

from studio.engine import Engine
from studio.engine.devices import (
    CPU_OUT_OF_MEMORY,
    GPU_OUT_OF_MEMORY,
    is_out_of_memory,
    out_of_memory_message,
)
from studio.errors import NodeError
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T
from studio.graph.workflow import Workflow

LINUX_CPU = RuntimeError(
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 1073741824000 bytes. Error code 12 (Cannot allocate memory)"
)
WINDOWS_CPU = RuntimeError(
    "[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: not enough memory: "
    "you tried to allocate 1073741824000 bytes."
)
CUDA = RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.mark.parametrize("exc", [LINUX_CPU, WINDOWS_CPU, MemoryError()])
def test_the_computer_running_out_of_memory_gets_advice_for_a_cpu(exc):
    assert is_out_of_memory(exc)
    message = out_of_memory_message(exc)
    assert message == CPU_OUT_OF_MEMORY
    assert "close other programs" in message and "set the device to CPU" not in message


def test_a_gpu_running_out_of_memory_keeps_its_advice():
    assert is_out_of_memory(CUDA)
    assert out_of_memory_message(CUDA) == GPU_OUT_OF_MEMORY


def test_other_errors_are_not_out_of_memory():
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("memory format is not channels_last"))


def test_torchs_own_cpu_allocator_failure_is_recognised():
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError) as caught:
        torch.empty(1 << 60, dtype=torch.uint8)  # an exabyte: more than any address space
    assert is_out_of_memory(caught.value)
    assert out_of_memory_message(caught.value) == CPU_OUT_OF_MEMORY


def _huge(ctx, width: int):
    raise LINUX_CPU


def test_a_node_running_out_of_cpu_memory_reports_out_of_memory_not_the_allocator():
    reg = Registry(
        [
            NodeSpec(
                "huge",
                "Huge",
                "test",
                _huge,
                inputs=(InputSpec("width", T.INT, default=16384),),
                outputs=(OutputSpec("image", T.IMAGE),),
            ),
            NodeSpec(
                "keep",
                "Keep",
                "test",
                lambda ctx, image: {},
                inputs=(InputSpec("image", T.IMAGE),),
                output_node=True,
            ),
        ]
    )
    wf = Workflow(reg)
    huge = wf.add_node("huge").id
    wf.connect(huge, "image", wf.add_node("keep").id, "image")
    result = Engine(reg).run(wf)
    message = result.errors[huge]
    assert message.startswith("out of memory")
    assert "DefaultCPUAllocator" not in message and "enforce fail" not in message


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
        ),
        MemoryError(),
    ],
)
def test_a_node_out_of_cpu_memory_says_what_it_was_doing_and_what_to_try(error):
    pytest.importorskip("torch")
    from nodes.sdload import with_oom_advice

    def decode():
        raise error

    with pytest.raises(NodeError) as info:
        with_oom_advice(decode, "decoding the image")
    message = str(info.value)
    assert message.startswith("out of memory while decoding the image")
    assert "close other programs" in message and "DefaultCPUAllocator" not in message


def test_other_runtime_errors_pass_through_unchanged():
    pytest.importorskip("torch")
    from nodes.sdload import with_oom_advice

    def broken():
        raise RuntimeError("shapes do not match")

    with pytest.raises(RuntimeError, match="shapes do not match"):
        with_oom_advice(broken, "sampling")


def test_the_precision_setting_chooses_the_gpu_dtype_and_the_cpu_stays_fp32(monkeypatch):
    import torch

    from studio.engine.devices import default_dtype

    monkeypatch.delenv("STUDIO_PRECISION", raising=False)
    assert default_dtype("cuda", "fp16") == torch.float16
    assert default_dtype("cuda", "fp32") == torch.float32
    assert default_dtype("mps", "bf16") == torch.bfloat16
    assert default_dtype("cpu", "fp16") == torch.float32  # half precision is slow on a CPU
    monkeypatch.setenv("STUDIO_PRECISION", "fp32")
    assert default_dtype("cuda", "bf16") == torch.float32  # the environment wins, as for devices
