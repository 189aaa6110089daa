"""What one worker process's node can serve, as detected once at start (workers/engines/probe.py).

``NodeInfo.capabilities(device)`` turns the findings into (engine, backend, precision) triples
(common/routing.py); ``why_not`` says, in one line, what is missing for any other triple. Both are
pure, so every branch - TensorRT ones included - is unit tested on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.schemas import Device

CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
CPU_EP = "CPUExecutionProvider"


@dataclass(frozen=True)
class NodeInfo:
    # Paddle Inference ("" paddle_version: Paddle is not installed here)
    cuda: bool = False
    trt_compile_version: tuple[int, int, int] = (0, 0, 0)
    paddle_version: str = ""
    gpu_selftest_ok: bool | None = None  # Paddle's numbers on this GPU against its CPU (None: not run)
    gpu_selftest: str = ""
    # ONNX Runtime ("" ort_version: not installed)
    ort_version: str = ""
    ort_providers: tuple[str, ...] = ()
    ort_gpu_selftest_ok: bool | None = None
    ort_gpu_selftest: str = ""
    #: model formats this node can convert to ONNX: "paddle" (paddle2onnx + onnx), "onnx" (FP16 variants)
    convert_from: tuple[str, ...] = ()
    # the machine
    trt_runtime: bool = False  # a loadable libnvinfer
    trt_runtime_version: str = ""  # its version, e.g. "10.8.0"
    gpu_name: str = ""
    gpu_compute_capability: str = ""
    gpu_count: int = 0
    cpu_bf16: bool = False
    cpu_count: int = 1

    @classmethod
    def from_dict(cls, data: dict) -> NodeInfo:
        """From its JSON form (``dataclasses.asdict``): lists back to tuples."""
        data = dict(data)
        for name in ("trt_compile_version", "ort_providers", "convert_from"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)

    @property
    def has_trt(self) -> bool:
        """Paddle-TensorRT: Paddle built with TensorRT, and libnvinfer loadable."""
        return self.cuda and self.trt_compile_version != (0, 0, 0) and self.trt_runtime

    @property
    def trt_version(self) -> str:
        return ".".join(map(str, self.trt_compile_version)) if self.has_trt else ""

    @property
    def paddle_gpu(self) -> bool:
        return bool(self.paddle_version) and self.cuda and self.gpu_count > 0 and self.gpu_selftest_ok is not False

    @property
    def ort_cuda(self) -> bool:
        return CUDA_EP in self.ort_providers and self.gpu_count > 0 and self.ort_gpu_selftest_ok is not False

    @property
    def ort_trt(self) -> bool:
        return self.ort_cuda and TRT_EP in self.ort_providers and self.trt_runtime

    def capabilities(self, device: Device) -> set[tuple[str, str, str]]:
        """(engine, backend, precision) triples this node serves on ``device`` ("cpu" or "gpu")."""
        return self._cpu_caps() if device == "cpu" else self._gpu_caps()

    def _cpu_caps(self) -> set[tuple[str, str, str]]:
        caps: set[tuple[str, str, str]] = set()
        if self.paddle_version:
            caps |= {("paddle", "cpu", "fp32"), ("paddle", "cpu", "int8")}
            if self.cpu_bf16:
                caps.add(("paddle", "cpu", "bf16"))
        if CPU_EP in self.ort_providers:
            caps |= {("onnxruntime", "cpu", "fp32"), ("onnxruntime", "cpu", "int8")}
        return caps

    def _gpu_caps(self) -> set[tuple[str, str, str]]:
        caps: set[tuple[str, str, str]] = set()
        if self.paddle_gpu:
            caps.add(("paddle", "gpu", "fp32"))
            if self.has_trt:
                caps |= {("paddle", "trt", p) for p in ("fp32", "fp16", "int8")}
        if self.ort_cuda:
            caps |= {("onnxruntime", "gpu", "fp32"), ("onnxruntime", "gpu", "fp16")}
        if self.ort_trt:
            caps |= {("onnxruntime", "trt", p) for p in ("fp32", "fp16", "int8")}
        return caps

    def why_not(self, engine: str, backend: str, precision: str) -> str:
        """A readable reason this node cannot serve (engine, backend, precision)."""
        if engine == "onnxruntime":
            return self._why_not_ort(backend, precision)
        if not self.paddle_version:
            return "Paddle is not installed on this node (pip install paddlepaddle==2.6.2)"
        if backend in ("gpu", "trt"):
            return self._why_not_paddle_gpu(backend, precision)
        if precision == "bf16" and not self.cpu_bf16:
            return "this CPU has neither AVX512-BF16 nor AMX-BF16, so oneDNN bf16 would not run natively"
        return f"paddle/{backend} does not serve {precision}"

    def _why_not_paddle_gpu(self, backend: str, precision: str) -> str:
        if not self.cuda:
            return (f"this node's Paddle {self.paddle_version} is built without CUDA "
                    f"(paddle.is_compiled_with_cuda() is False); {backend} needs paddlepaddle-gpu")
        if self.gpu_count < 1:
            return "no GPU is visible to this process (check CUDA_VISIBLE_DEVICES and the driver)"
        if self.gpu_selftest_ok is False:
            return f"Paddle computes wrong results on this GPU ({self.gpu_selftest})"
        if backend == "trt" and self.trt_compile_version == (0, 0, 0):
            return ("this node's Paddle is not compiled with TensorRT "
                    "(paddle.inference.get_trt_compile_version() is (0, 0, 0))")
        if backend == "trt" and not self.trt_runtime:
            return ("TensorRT dynamic library (libnvinfer) is not found on this node; install TensorRT "
                    f"{'.'.join(map(str, self.trt_compile_version))} and add it to LD_LIBRARY_PATH")
        return f"paddle/{backend} does not serve {precision}"

    def _why_not_ort(self, backend: str, precision: str) -> str:
        if not self.ort_version:
            return ("ONNX Runtime is not installed on this node (pip install trtbatch[gpu] on GPU nodes, "
                    "trtbatch[cpu] on CPU nodes)")
        if backend in ("gpu", "trt") and CUDA_EP not in self.ort_providers:
            return (f"this node's onnxruntime {self.ort_version} has no CUDAExecutionProvider (it is the CPU "
                    "wheel; install onnxruntime-gpu)")
        if backend in ("gpu", "trt") and self.gpu_count < 1:
            return "no GPU is visible to this process (check CUDA_VISIBLE_DEVICES and the driver)"
        if backend in ("gpu", "trt") and self.ort_gpu_selftest_ok is False:
            return f"ONNX Runtime's CUDA execution provider fails on this GPU ({self.ort_gpu_selftest})"
        if backend == "trt" and TRT_EP not in self.ort_providers:
            return f"this node's onnxruntime {self.ort_version} was built without the TensorRT execution provider"
        if backend == "trt" and not self.trt_runtime:
            return ("ONNX Runtime's TensorRT execution provider needs TensorRT 10 (libnvinfer.so.10) on "
                    "LD_LIBRARY_PATH; none is loadable on this node")
        if backend == "gpu" and precision == "int8":
            return ("ONNX Runtime's CUDA execution provider has no INT8 convolution kernels (a QDQ model "
                    "would run dequantized); use the TensorRT EP or the CPU EP")
        return f"onnxruntime/{backend} does not serve {precision}"
