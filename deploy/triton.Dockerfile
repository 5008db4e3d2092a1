# NVIDIA's Triton 24.10 (Triton 2.51, the release of the server bundled for the tests) with what the
# python-backend model <model>_bytes imports: numpy, Pillow, onnxruntime for its own session of the
# classifier (publish.bytes_inference=local, the default on the CPU; onnxruntime 1.19 is the release in
# that image's onnxruntime backend, which serves <model> itself), and threadpoolctl (numpy's BLAS in one
# thread beside onnxruntime, for the novelty scores).
# Build: docker build -f deploy/triton.Dockerfile -t registry.example.com/sortflow-triton:1.0 .
FROM nvcr.io/nvidia/tritonserver:24.10-py3

RUN pip install --no-cache-dir "numpy==1.26.4" "pillow==11.3.0" "onnxruntime==1.19.2" "threadpoolctl==3.8.0"
