#!/usr/bin/env bash
# GPU throughput at the CIFAR-10 DDPM configuration (35.7 M parameters): training and sampling
# images/s in fp32, bf16 and bf16 + torch.compile, ddpmkit against diffusers' UNet2DModel.
# One call, under 5 minutes on one H100. Needs a CUDA build of torch and `pip install diffusers`.
# Extra arguments go to bench/speed_gpu.py (e.g. --size tiny --device cpu to check the script).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python bench/speed_gpu.py "$@"
