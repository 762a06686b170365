# A GPU training worker: kohya-ss/sd-scripts at a pinned commit plus our worker process.
#   docker build -f docker/worker.Dockerfile -t lora-guild-worker .
ARG SD_SCRIPTS_COMMIT=48d368fa557731ad0488c07304dfeba8c07910eb

FROM node:24-bookworm-slim AS node

FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ARG SD_SCRIPTS_COMMIT
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv git ca-certificates libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

# sd-scripts, installed from its repository at build time (never vendored here).
RUN git clone https://github.com/kohya-ss/sd-scripts /opt/sd-scripts \
 && git -C /opt/sd-scripts checkout "$SD_SCRIPTS_COMMIT"
WORKDIR /opt/sd-scripts
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install torch==2.6.0 torchvision==0.21.0 --index-url https://download.pytorch.org/whl/cu124 \
 && /opt/venv/bin/pip install -r requirements.txt \
 && /opt/venv/bin/pip install prodigyopt bitsandbytes dadaptation==3.2 \
 && /opt/venv/bin/python -c "import dadaptation, prodigyopt, lion_pytorch, transformers.optimization" \
 && /opt/venv/bin/accelerate config default --mixed_precision bf16
# DAdaptAdam needs dadaptation, which sd-scripts' requirements leave out. The worker checks at
# start-up which optimizers TRAINER_PYTHON can import and offers only those.
ENV PATH=/opt/venv/bin:$PATH SD_SCRIPTS_DIR=/opt/sd-scripts MODELS_DIR=/models DATA_DIR=/data \
    WORKER_QUEUES=training WORKER_CACHE_DIR=/data/worker-cache TRAINER_PYTHON=/opt/venv/bin/python3

COPY --from=node /usr/local/bin/node /usr/local/bin/node
WORKDIR /app
ENV ONNXRUNTIME_NODE_INSTALL=skip
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s /usr/local/lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
VOLUME ["/data", "/models"]
CMD ["node", "node_modules/tsx/dist/cli.mjs", "src/worker/main.ts"]
