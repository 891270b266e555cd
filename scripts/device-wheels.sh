#!/usr/bin/env bash
# Here, before a lent GPU machine's first call: download into .whl/ the wheels sweeplab needs that the
# machine's image lacks (Python 3.12, x86-64; its torch, transformers, numpy, pandas... are kept), so that
# scripts/device-run.sh can install them there with no network. About 42 MB; with the working tree (16 MB)
# under the 64 MiB a call may carry. The call names `.whl` in `carry`.
#
#   scripts/device-wheels.sh          # resolve, keep what the image lacks, download; prints the total size
#
# What the image holds is IMAGE_PACKAGES below, copied from the workplace's device notes (KINDS.md, read
# 2026-11-17); a wheel for a package it lists is not downloaded, whatever its version there.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl

IMAGE_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite
lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy
seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
# What the GPU checks import: the sweep (Hydra, its SLURM launcher's modules, MLflow's SQLite store) and diffusers.
WANTED=("diffusers>=0.42" "hydra-core>=1.3.2,<1.4" "omegaconf>=2.3" "hydra-submitit-launcher>=1.2,<1.3" "mlflow>=3.0")
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)

# Hydra's parser runtime is published as a source archive only: build its (pure Python) wheel here.
"$python" -m pip wheel -q --no-deps -w "$work/local" "antlr4-python3-runtime==4.9.3"
"$python" -m pip install -q --dry-run --ignore-installed --report "$work/report.json" --only-binary=:all: \
    --find-links "$work/local" "${TARGET[@]}" --target "$work/target" "${WANTED[@]}"
IMAGE_PACKAGES=$IMAGE_PACKAGES "$python" - "$work/report.json" > "$work/need.txt" <<'EOF'
import json, os, re, sys

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

image = {norm(name) for name in os.environ["IMAGE_PACKAGES"].split()}
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if norm(name) not in image and norm(name) != "antlr4-python3-runtime":
        print(f"{name}=={version}")
EOF
"$python" -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d .whl -r "$work/need.txt"
cp "$work"/local/*.whl .whl/
echo "device-wheels: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (carry: [\".whl\"])"
