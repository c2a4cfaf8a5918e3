# The ssl_dr image: this package installed from its wheel on a PyTorch base, run as a non-root user.
#   docker build -t ssl_dr .                                          # GPU: the PyTorch CUDA runtime image
#   docker build -t ssl_dr:cpu --build-arg BASE=python:3.11-slim .    # CPU only (CPU torch): smoke tests, no GPU
#   docker run --rm --gpus all --shm-size=16g \
#     -v /data/aptos2019:/data/aptos2019:ro -v $PWD/outputs:/work/outputs -v $PWD/cache:/work/cache \
#     ssl_dr experiment=rotation data=aptos data.root=/data/aptos2019 trainer=gpu
# (docs/scaling.md has DDP, sweeps and the throughput benchmark; tests/test_docker.py replays the install.)
ARG BASE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE}
# Where a base without torch (the CPU variant) gets the lock's torch and torchvision: the CPU-only wheels, not
# PyPI's CUDA build with its ~3 GB of nvidia-* libraries.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A C compiler: Triton (torch.compile's GPU backend, scale.compile=true) builds its launcher with it at the first
# compiled step, and the runtime images ship none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, from the lock (the versions the README's numbers were measured with), so editing the
# code does not reinstall them. The lock's torch stack (torch, torchvision, triton, the nvidia-*/cuda-* wheels)
# is left out: a CUDA base image's torch/torchvision are built for its CUDA and satisfy pyproject's ranges (no
# second multi-GB torch); a base without torch gets the lock's torch/torchvision pins from TORCH_INDEX.
# environment.json in every run folder records which torch ran.
COPY requirements/cpu.lock ./requirements/cpu.lock
RUN grep -vE '^(torch|torchvision|triton)==|^(nvidia|cuda)-' requirements/cpu.lock > requirements/image.txt \
    && if ! python -c "import torch" 2>/dev/null; then \
           pip install --index-url "$TORCH_INDEX" $(grep -E '^(torch|torchvision)==' requirements/cpu.lock); \
       fi \
    && pip install -r requirements/image.txt

# The package, not editable: its wheel carries conf/ as ssl_dr/conf (setup.py maps it), so the commands find
# their configs from any folder. Exactly what the build reads: pyproject.toml, setup.py, README.md (the long
# description), ssl_dr/, conf/. The lock stays the constraint, so the extra's plugins are the pinned ones.
COPY pyproject.toml setup.py README.md ./
COPY ssl_dr ./ssl_dr
COPY conf ./conf
RUN pip install --constraint requirements/image.txt ".[launchers]" \
    && pip show ssl_dr \
    && rm -rf build ssl_dr.egg-info

# Not part of the package: docker run --entrypoint python ssl_dr /app/benchmarks/throughput.py
COPY benchmarks ./benchmarks

# Non-root user; HOME and /work are world-writable so `docker run --user $(id -u):$(id -g)` (files on the
# mounted outputs owned by you) works too: W&B and matplotlib keep their settings under HOME.
RUN useradd --create-home app \
    && mkdir -p /work \
    && chmod 1777 /work /home/app
ENV HOME=/home/app \
    SSL_DR_ROOT=/work \
    WANDB_SILENT=true
USER app

# Run folders, the synthetic data set and the pretext/image caches all go under SSL_DR_ROOT=/work
# (outputs/, data/, cache/): mount it, or its subfolders, to keep them.
WORKDIR /work

# The last build step: the installed package (not /app's sources: /work is the working folder) composes the
# paper's GPU sweep config as the image's user, or the build fails here rather than at `docker run`.
RUN python -m ssl_dr.train --cfg job experiment=paper trainer=gpu > /dev/null

VOLUME ["/work"]
ENTRYPOINT ["python", "-m", "ssl_dr.train"]
