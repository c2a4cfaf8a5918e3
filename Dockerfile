# GPU image for ssl_dr: the official PyTorch CUDA runtime + this package, run as a non-root user.
#   docker build -t ssl_dr .
#   docker run --rm --gpus all --shm-size=16g \
#     -v /data/aptos2019:/data/aptos2019:ro -v $PWD/outputs:/work/outputs -v $PWD/cache:/work/cache \
#     ssl_dr experiment=rotation data=aptos data.root=/data/aptos2019 trainer=gpu
# (docs/scaling.md has DDP, sweeps and the throughput benchmark.)
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from the lock (the versions the README's numbers were measured with), so editing the
# code does not reinstall them. The lock's torch stack (torch, torchvision, triton, the nvidia-*/cuda-* wheels)
# is left out: the base image's torch/torchvision are built for its CUDA and satisfy pyproject's ranges (no
# second multi-GB torch); environment.json in every run folder records which torch ran.
COPY pyproject.toml README.md ./
COPY requirements/cpu.lock ./requirements/cpu.lock
RUN grep -vE '^(torch|torchvision|triton)==|^(nvidia|cuda)-' requirements/cpu.lock > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Editable install: ssl_dr/train.py reads its configs from conf/ NEXT TO the package source
# (Path(__file__).parent.parent / "conf"), which a wheel install would not ship.
COPY ssl_dr ./ssl_dr
COPY conf ./conf
COPY benchmarks ./benchmarks
RUN pip install --no-deps -e . \
    && pip show ssl_dr \
    && python -m ssl_dr.train --cfg job experiment=rotation > /dev/null

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
VOLUME ["/work"]

ENTRYPOINT ["python", "-m", "ssl_dr.train"]
