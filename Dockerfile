# CPU image: producer CLI and CPU workers (Paddle Inference with oneDNN FP32/INT8/bf16, ONNX Runtime's
# CPU EP), model making and conversion to ONNX.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common common
COPY producer producer
COPY workers workers
COPY cli cli
COPY tools tools
COPY bench bench
RUN pip install '.[cpu]' flower==2.0.1 && useradd --create-home trtbatch
USER trtbatch
ENTRYPOINT ["trtbatch"]
CMD ["--help"]
