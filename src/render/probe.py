"""meshd's Blender probe (embedded in the meshd binary).

Run as `blender -b --factory-startup -noaudio --python-exit-code 86 --python probe.py`.
Prints one line `@@MESHD@@ {json}` with the Blender version, every Cycles device of
every compute backend this build has, and whether Cycles has OpenImageDenoise.
"""

import json
import sys

import bpy

BACKENDS = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")


def devices_of(prefs, backend):
    if hasattr(prefs, "refresh_devices"):
        prefs.refresh_devices()
        return list(prefs.devices)
    prefs.get_devices()  # before 3.0
    return list(prefs.devices)


def main():
    info = {
        "version": bpy.app.version_string,
        "version_tuple": list(bpy.app.version),
        "devices": [],
        "backends": [],
        "has_oidn": False,
        "errors": [],
    }
    try:
        import _cycles

        info["has_oidn"] = bool(getattr(_cycles, "with_openimagedenoise", False))
    except Exception as e:
        info["errors"].append("cycles: %s" % e)

    seen = set()
    try:
        prefs = bpy.context.preferences.addons["cycles"].preferences
        for backend in BACKENDS:
            try:
                prefs.compute_device_type = backend
            except TypeError:
                continue  # not compiled into this build
            info["backends"].append(backend)
            try:
                devs = devices_of(prefs, backend)
            except Exception as e:
                info["errors"].append("%s: %s" % (backend, e))
                continue
            for d in devs:
                if d.type != backend and d.type != "CPU":
                    continue
                key = (d.type, d.id)
                if key in seen:
                    continue
                seen.add(key)
                info["devices"].append({"type": d.type, "name": d.name, "id": d.id})
        if not any(d["type"] == "CPU" for d in info["devices"]):
            prefs.compute_device_type = "NONE"
            for d in devices_of(prefs, "NONE"):
                if d.type == "CPU" and ("CPU", d.id) not in seen:
                    seen.add(("CPU", d.id))
                    info["devices"].append({"type": "CPU", "name": d.name, "id": d.id})
    except Exception as e:
        info["errors"].append("devices: %s" % e)

    sys.stdout.write("@@MESHD@@ " + json.dumps(info) + "\n")
    sys.stdout.flush()


main()
