"""Export: a pawlab model as a file other runtimes read (ONNX), checked against pawlab's answers.

graph.py      the network with its normalisation and softmax as one ONNX graph (uint8 pixels in)
onnxfile.py   the file's metadata, and `load_onnx`: a pawlab ONNX file opened with onnxruntime
check.py      the images an export is checked on, and the tolerances (`TOLERANCES`)
quantize.py   static int8 quantization (QDQ), calibrated on training images
export.py     `export_onnx`: all of it, written whole or not at all
"""

from pawlab.export.check import TOLERANCES, Tolerance
from pawlab.export.export import FORMATS, ExportReport, export_onnx
from pawlab.export.onnxfile import OnnxModel, load_onnx

__all__ = ["FORMATS", "TOLERANCES", "ExportReport", "OnnxModel", "Tolerance", "export_onnx", "load_onnx"]
