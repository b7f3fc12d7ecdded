#!/usr/bin/env bash
# Packages the Blender add-on (addon/meshd_blender/) as an installable zip:
# Edit > Preferences > Add-ons > Install... and pick the file.
# Usage: scripts/package-addon.sh [OUT.zip]   (default target/meshd-blender-addon.zip)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-target/meshd-blender-addon.zip}")
mkdir -p "$(dirname "$out")"
rm -f "$out"
python3 - "$out" <<'PY'
import os, sys, zipfile
out = sys.argv[1]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for root, _, files in os.walk("addon/meshd_blender"):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(root, f)
                z.write(path, os.path.relpath(path, "addon"))
    # meshd's own walker, so the add-on lists the open file's dependencies as the daemon
    # would (under the names the walker imports itself by).
    z.write("src/render/project.py", "meshd_blender/meshd_project.py")
    z.write("src/render/project_paths.py", "meshd_blender/meshd_paths.py")
PY
echo "$out"
