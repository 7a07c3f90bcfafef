#!/usr/bin/env bash
# Creates (or brings up to date) the virtual environment the MONAI Label app runs in: MONAI Label 0.8.5 with chestzoo
# installed from this repository. It needs its own environment because MONAI Label 0.8.5 requires numpy below 2,
# pydicom below 3 and jsonschema below 4 (through pydicom-seg); constraints.txt holds those pins.
#
#   apps/monailabel/setup_env.sh [VENV]        (default VENV: .venv-monailabel in the repository)
#   source VENV/bin/activate                   (then `monailabel start_server ...`, see apps/monailabel/README.md)
#
# Set PYTHON to choose the interpreter (3.10 or newer). The first run downloads MONAI Label and PyTorch (minutes).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/.venv-monailabel}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$here/constraints.txt" "monailabel==0.8.5" -e "$root"
"$venv/bin/python" - <<'PY'
import monailabel, numpy, pydicom, torch
import chestzoo.labelling  # the app's own code imports from here
print(f"MONAI Label {monailabel.__version__}, torch {torch.__version__}, numpy {numpy.__version__}, pydicom {pydicom.__version__}")
PY
echo "ready: source $venv/bin/activate"
