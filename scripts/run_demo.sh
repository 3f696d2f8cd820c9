#!/usr/bin/env bash
# The main job: the bundled model on the bundled sample -> demo-output/*_cvdm_{mean,var}.tif
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
sample=$(.venv/bin/python -c "import napari_cvdm.sample_data as s; print(s.path('nuclei_widefield.tif'))")
# 8 samples of 10 deterministic steps: about a minute on a 2-core CPU (see docs/benchmarks.md
# for what more steps buy); any other cvdm predict option can be appended.
.venv/bin/cvdm predict "$sample" -o demo-output --model demo --samples 8 --steps 10 --eta 0 --seed 0 "$@"
