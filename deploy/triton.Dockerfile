# NVIDIA's Triton 24.10 (Triton 2.51, the release of the server bundled for the tests) with what the
# python-backend model <model>_bytes imports (numpy and Pillow); the onnxruntime backend serves the
# classifier itself. Build: docker build -f deploy/triton.Dockerfile -t registry.example.com/sortflow-triton:1.0 .
FROM nvcr.io/nvidia/tritonserver:24.10-py3

RUN pip install --no-cache-dir "numpy==1.26.4" "pillow==11.3.0"
