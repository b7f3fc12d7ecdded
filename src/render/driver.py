"""meshd's persistent Blender driver (embedded in the meshd binary).

Blender runs it once, after loading the scene:

    blender -b --factory-startup -Y -noaudio SCENE.blend --python-exit-code 86 \
        --python driver.py -- --meshd-config JOB.json

It applies the job's settings once, prints a `ready` event, then reads one JSON
command per line on stdin and answers each with exactly one event on stdout:

    {"cmd": "render", "frame": N, "out": "/abs/dir/frame_####"}  -> done | error
    {"cmd": "quit"}                                              -> exits

Events are single lines `@@MESHD@@ {json}`:

    {"event": "ready", "width": W, "height": H, "error": null | "...",
     "missing": ["missing dependency textures/wood.png", ...], ...}
    {"event": "done", "frame": N, "path": "/abs/dir/frame_0007.png"}
    {"event": "error", "frame": N, "message": "..."}

Every exception in the loop becomes an `error` event; the loop never dies on one.
"""

import json
import sys
import traceback

import bpy

MARKER = "@@MESHD@@ "


def flush_c_stdio():
    """Flush Blender's C stdout so its `Error:`/`Saved:` lines precede our marker."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:
        pass


def emit(event, **fields):
    flush_c_stdio()
    fields["event"] = event
    sys.stdout.write(MARKER + json.dumps(fields) + "\n")
    sys.stdout.flush()


def load_config():
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    if "--meshd-config" not in argv:
        raise RuntimeError("driver.py needs --meshd-config FILE")
    path = argv[argv.index("--meshd-config") + 1]
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def has_oidn():
    try:
        import _cycles

        return bool(getattr(_cycles, "with_openimagedenoise", False))
    except Exception:
        return False


def pick_scene(cfg):
    name = cfg.get("scene")
    if name:
        scene = bpy.data.scenes.get(name)
        if scene is None:
            names = ", ".join(repr(s.name) for s in bpy.data.scenes)
            raise ValueError("scene %r not found in the .blend (it has %s)" % (name, names))
    else:
        scene = bpy.context.scene
    window = getattr(bpy.context, "window", None)
    if window is not None:
        try:
            window.scene = scene
        except Exception:
            pass
    return scene


def set_engine(scene, engine):
    # EEVEE's id: BLENDER_EEVEE up to 4.1, BLENDER_EEVEE_NEXT in 4.2-4.5, BLENDER_EEVEE again
    # from 5.0; a wrong id raises TypeError. The other id is tried too, for builds in between.
    eevee = ["BLENDER_EEVEE", "BLENDER_EEVEE_NEXT"]
    if (4, 2, 0) <= bpy.app.version < (5, 0, 0):
        eevee.reverse()
    candidates = {
        "CYCLES": ["CYCLES"],
        "EEVEE": eevee,
        "WORKBENCH": ["BLENDER_WORKBENCH"],
    }.get(engine)
    if candidates is None:
        raise ValueError("unknown render engine %r" % engine)
    for ident in candidates:
        try:
            scene.render.engine = ident
            return
        except TypeError:
            continue
    raise ValueError("render engine %s is not available in this Blender" % engine)


def set_format(scene, fmt, depth):
    s = scene.render.image_settings
    try:
        # 5.0+: file_format only takes formats of the current media type, and multilayer EXR
        # is a media type of its own; so the media type first (before 5.0 there is none).
        if hasattr(s, "media_type"):
            s.media_type = "MULTI_LAYER_IMAGE" if fmt == "OPEN_EXR_MULTILAYER" else "IMAGE"
        s.file_format = fmt
    except TypeError:
        raise ValueError("output format %s is not compiled into this Blender" % fmt)
    # Switching formats resets the depth (EXR: 32; PNG after EXR: 16 in 4.x, 8 in 5.0): last.
    if depth is not None:
        try:
            s.color_depth = str(depth)
        except TypeError:
            raise ValueError("color depth %s is not supported by format %s" % (depth, fmt))
    scene.render.use_file_extension = True
    scene.render.use_overwrite = True
    scene.render.use_placeholder = False


def set_device(scenes, device, device_id):
    """Select the Cycles device. GPU kinds enable only matching devices (one id if given)."""
    prefs = bpy.context.preferences.addons["cycles"].preferences
    if device == "CPU":
        try:
            prefs.compute_device_type = "NONE"
        except TypeError:
            pass
        for s in scenes:
            s.cycles.device = "CPU"
        return
    try:
        prefs.compute_device_type = device
    except TypeError:
        raise ValueError("this Blender has no %s support" % device)
    if hasattr(prefs, "refresh_devices"):
        prefs.refresh_devices()
    else:
        prefs.get_devices()  # before 3.0
    enabled = 0
    for d in prefs.devices:
        d.use = d.type == device and (not device_id or d.id == device_id)
        enabled += int(d.use)
    if enabled == 0:
        which = ("device id %r" % device_id) if device_id else "device"
        raise ValueError("no %s %s found by Cycles" % (device, which))
    for s in scenes:
        s.cycles.device = "GPU"


def disable_denoising(scenes, device):
    for s in scenes:
        c = getattr(s, "cycles", None)
        if c is None:
            continue
        if device == "OPTIX" and getattr(c, "denoiser", "") == "OPTIX":
            continue
        c.use_denoising = False
        for layer in s.view_layers:
            lc = getattr(layer, "cycles", None)
            if lc is not None and hasattr(lc, "use_denoising"):
                lc.use_denoising = False


def output_size(scene):
    r = scene.render
    w = r.resolution_x * r.resolution_percentage // 100
    h = r.resolution_y * r.resolution_percentage // 100
    if r.use_border and r.use_crop_to_border:
        return None, None  # Blender's rounding of the crop is not worth guessing
    return w, h


def apply_settings(cfg):
    """Apply the job's overrides. Returns (scene, error message or None)."""
    scene = bpy.context.scene
    try:
        scene = pick_scene(cfg)
        if cfg.get("camera"):
            cam = scene.objects.get(cfg["camera"])
            if cam is None or cam.type != "CAMERA":
                raise ValueError("camera %r not found in scene %r" % (cfg["camera"], scene.name))
            scene.camera = cam
        problem = project_module().camera_problem(scene)
        if problem:
            raise ValueError(problem)
        if cfg.get("engine"):
            set_engine(scene, cfg["engine"])
        set_format(scene, cfg["format"], cfg.get("color_depth"))
        if cfg.get("resolution_pct"):
            scene.render.resolution_percentage = int(cfg["resolution_pct"])
        samples = cfg.get("samples")
        if samples:
            if scene.render.engine == "CYCLES":
                scene.cycles.samples = int(samples)
            elif hasattr(scene, "eevee"):
                scene.eevee.taa_render_samples = int(samples)
        scenes = list(bpy.data.scenes)
        if scene.render.engine == "CYCLES":
            set_device(scenes, cfg.get("device") or "CPU", cfg.get("device_id"))
            if not has_oidn():
                disable_denoising(scenes, cfg.get("device") or "CPU")
        scene.render.use_persistent_data = True
        return scene, None
    except Exception as e:  # reported on every frame; never fatal
        return scene, str(e) or e.__class__.__name__


class Written:
    """Tracks render_write / render_cancel handler calls for the current frame."""

    def __init__(self):
        self.written = False
        self.cancelled = False

    def on_write(self, *_):
        self.written = True

    def on_cancel(self, *_):
        self.cancelled = True


def render_frame(scene, frame, out, track):
    import os

    if "{" in out and bpy.app.version >= (4, 5, 0):
        out = out.replace("{", "{{").replace("}", "}}")
    scene.render.filepath = out
    path = bpy.path.abspath(scene.render.frame_path(frame=frame))
    if os.path.exists(path):
        os.remove(path)
    scene.frame_start = frame
    scene.frame_end = frame
    track.written = track.cancelled = False
    result = bpy.ops.render.render(animation=True, scene=scene.name)
    if track.cancelled:
        return None, "render cancelled"
    if "FINISHED" not in result:
        return None, "render operator returned %s" % ",".join(sorted(result))
    if not track.written or not os.path.exists(path):
        return None, "no image written to %s" % path
    return path, None


def project_module(name="meshd_project"):
    """One of meshd's project modules, which meshd writes next to the job file."""
    import importlib
    import os

    argv = sys.argv[sys.argv.index("--") + 1 :]
    here = os.path.dirname(os.path.abspath(argv[argv.index("--meshd-config") + 1]))
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(name)


def check_project(cfg):
    """Remap the project's paths into this machine's copy and list what did not resolve."""
    layout = cfg.get("project")
    if not layout:
        return []
    try:
        layout = dict(layout, root_here=str(layout["root_here"]))
        return list(project_module("meshd_remap").prepare(layout))
    except Exception as e:
        traceback.print_exc()
        return ["cannot check the project's files: %s: %s" % (e.__class__.__name__, e)]


def main():
    cfg = load_config()
    # Dependencies first: settings and every frame must see the remapped paths.
    missing = check_project(cfg)
    scene, error = apply_settings(cfg)
    width, height = output_size(scene)
    track = Written()
    bpy.app.handlers.render_write.append(track.on_write)
    bpy.app.handlers.render_cancel.append(track.on_cancel)
    emit(
        "ready",
        width=width,
        height=height,
        error=error,
        missing=missing,
        blender=bpy.app.version_string,
        scene=scene.name,
        engine=scene.render.engine,
        oidn=has_oidn(),
        autoexec_fail=bool(getattr(bpy.app, "autoexec_fail", False)),
    )
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        frame = None
        try:
            cmd = json.loads(line)
            if cmd.get("cmd") == "quit":
                break
            if cmd.get("cmd") != "render":
                raise ValueError("unknown command %r" % cmd.get("cmd"))
            frame = int(cmd["frame"])
            if error is not None:
                emit("error", frame=frame, message="job settings: " + error)
                continue
            path, why = render_frame(scene, frame, cmd["out"], track)
            if why is not None:
                emit("error", frame=frame, message=why)
            else:
                emit("done", frame=frame, path=path)
        except Exception as e:
            traceback.print_exc()
            msg = str(e).strip()
            if not msg.startswith("Error:"):
                msg = "%s: %s" % (e.__class__.__name__, msg)
            emit("error", frame=frame, message=msg)


main()
