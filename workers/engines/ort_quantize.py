"""TensorRT calibration tables from ONNX Runtime's calibrator (route a of the guide, for the TensorRT EP).

The calibrator adds an output to every tensor of the FP32 model, runs it on the CPU EP over the
calibration images, and picks each tensor's range by minimising the KL divergence of its histogram
(``CalibrationMethod.Entropy``: what TensorRT's own IInt8EntropyCalibrator2 does). The ranges are
written in the FlatBuffers table format the TensorRT EP reads with
``trt_int8_use_native_calibration_table=0``. It runs on any node with ONNX Runtime: the table is made
once and travels through Redis to every TensorRT worker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.errors import CalibrationError
from common.spec import ORT_CALIBRATION_TABLE


def calibration_table(model: Path, input_name: str, arrays: np.ndarray, batch_size: int, work: Path) -> Path:
    """Calibrate ``model`` (FP32 ONNX) on ``arrays``; returns the FlatBuffers table under ``work``."""
    from onnxruntime.quantization import calibrate
    from onnxruntime.quantization.quant_utils import write_calibration_table

    # whole batches only: the calibrator stacks each tensor's batches, which must share one shape
    usable = len(arrays) // batch_size * batch_size or len(arrays)
    batch_size = min(batch_size, usable)

    class Reader(calibrate.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{input_name: arrays[i:i + batch_size]} for i in range(0, usable, batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    work.mkdir(parents=True, exist_ok=True)
    calibrator = calibrate.create_calibrator(str(model), [], augmented_model_path=str(work / "augmented.onnx"),
                                             calibrate_method=calibrate.CalibrationMethod.Entropy,
                                             extra_options={"symmetric": True})
    calibrator.set_execution_providers(["CPUExecutionProvider"])
    calibrator.collect_data(Reader())
    ranges = calibrator.compute_data()
    write_calibration_table(ranges.data, dir=str(work))  # calibration.flatbuffers, .cache, .json
    table = work / ORT_CALIBRATION_TABLE
    if not table.is_file() or table.stat().st_size == 0:
        raise CalibrationError("ONNX Runtime's calibrator wrote no table")
    return table
