#!/usr/bin/env bash
# Build the wheel, install it alone into a fresh virtual environment (no source tree on the
# path), check it carries the manifest, weights and sample, and run the main job from it.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip install -q build
.venv/bin/python -m build -q --wheel --outdir "$work/dist" . >/dev/null
wheel=$(ls "$work"/dist/napari_cvdm-*.whl)
.venv/bin/python -m zipfile -l "$wheel" > "$work/listing.txt"
for member in napari_cvdm/napari.yaml napari_cvdm/weights/widefield-x2.cvdm.safetensors \
              napari_cvdm/weights/demo.cvdm.safetensors \
              napari_cvdm/sample_data/nuclei_widefield.tif; do
    grep -q "$member" "$work/listing.txt" || { echo "missing $member in wheel"; exit 1; }
done
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q -c .ci/constraints.txt "$wheel"
cd "$work"
sample=$("$work/venv/bin/python" -c "import napari_cvdm.sample_data as s; print(s.path())")
"$work/venv/bin/cvdm" predict "$sample" -o "$work/out" --samples 2 --steps 5 --seed 0 --quiet
test -s "$work/out/nuclei_widefield_cvdm_mean.tif" && test -s "$work/out/nuclei_widefield_cvdm_std.tif" \
    && test -s "$work/out/nuclei_widefield_cvdm_var.tif"
echo "wheel OK: $(basename "$wheel")"
