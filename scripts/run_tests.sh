#!/usr/bin/env bash
# The test suite on a fresh machine: system libraries for headless Qt/OpenGL (Xvfb + Mesa),
# a virtual environment with the testing extras, then pytest under a virtual display.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=0
command -v xvfb-run >/dev/null 2>&1 || need_apt=1
for lib in libxcb-cursor.so.0 libEGL.so.1 libxkbcommon-x11.so.0 libdbus-1.so.3; do
    ldconfig -p | grep -q "$lib" || need_apt=1
done
if [ "$need_apt" = 1 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends xvfb xauth libgl1 libgl1-mesa-dri \
        libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 \
        libxcb-xinerama0 libxcb-render-util0 libxcb-image0 libxcb-randr0 libdbus-1-3 \
        libfontconfig1 libglib2.0-0 >/dev/null
fi
EXTRAS=testing bash scripts/setup_env.sh
set +e
xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" = 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit "$code"
