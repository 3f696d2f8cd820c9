#!/usr/bin/env bash
# The main job: the bundled model on the bundled sample -> demo-output/*_cvdm_{mean,std,var}.tif
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
sample=$(.venv/bin/python -c "import napari_cvdm.sample_data as s; print(s.path('nuclei_widefield.tif'))")
# The bundled model with the defaults of every front end (settings.py; docs/benchmarks.md for
# what more steps buy); any other cvdm predict option can be appended.
.venv/bin/cvdm predict "$sample" -o demo-output --seed 0 --overwrite "$@"
