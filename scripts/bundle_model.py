"""Copy a trained model into the package as the bundled `demo` model (float16 weights).

    python scripts/bundle_model.py runs/demo-small.cvdm.safetensors
"""

import sys
from pathlib import Path

import napari_cvdm as nc
from napari_cvdm.io import BUNDLED

TARGET = Path(__file__).resolve().parents[1] / "src" / "napari_cvdm" / "weights" / BUNDLED["demo"]

model = nc.load_model(sys.argv[1])
model.metadata["name"] = "demo"
nc.save_model(model, TARGET, half=True)
size = TARGET.stat().st_size / 1e6
assert size <= 20, f"bundled weights must stay under 20 MB, got {size:.1f} MB"
print(f"wrote {TARGET} ({size:.1f} MB)")
