# meshd add-on for Blender: submit the open file to the local meshd daemon and follow the job.
#
# It talks to the daemon's local API (HTTP on loopback, with the token the daemon writes to
# <data dir>/api.json), as `meshd submit` does. Packaged by scripts/package-addon.sh.

import json
import os
import urllib.error
import urllib.parse
import urllib.request

import bpy

bl_info = {
    "name": "meshd render mesh",
    "author": "meshd",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "Properties > Render > meshd",
    "description": "Render the open file on a meshd peer-to-peer render mesh",
    "category": "Render",
}

FORMATS = [
    ("Png", "PNG", ""),
    ("Jpeg", "JPEG", ""),
    ("OpenExr", "OpenEXR", ""),
    ("OpenExrMultilayer", "OpenEXR multilayer", ""),
    ("Tiff", "TIFF", ""),
]
ENGINES = [
    ("SCENE", "As in the file", ""),
    ("Cycles", "Cycles", ""),
    ("Eevee", "Eevee", ""),
    ("Workbench", "Workbench", ""),
]


class MeshdError(Exception):
    pass


def data_dir(prefs):
    """The daemon's data dir: the add-on's setting, $MESHD_DATA_DIR, or meshd's default."""
    if prefs and prefs.data_dir:
        return bpy.path.abspath(prefs.data_dir)
    if os.environ.get("MESHD_DATA_DIR"):
        return os.environ["MESHD_DATA_DIR"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "meshd")


def endpoint(prefs):
    path = os.path.join(data_dir(prefs), "api.json")
    try:
        with open(path) as f:
            api = json.load(f)
    except OSError:
        raise MeshdError(f"no meshd daemon is running for {data_dir(prefs)}: start `meshd join`")
    return api["addr"], api["token"]


def call(prefs, method, path, body=None):
    addr, token = endpoint(prefs)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{addr}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            msg = json.load(e).get("error", str(e))
        except Exception:
            msg = str(e)
        raise MeshdError(msg)
    except (urllib.error.URLError, OSError) as e:
        raise MeshdError(f"cannot reach the meshd daemon at {addr}: {e}")


def prefs_of(context):
    addon = context.preferences.addons.get(__name__)
    return addon.preferences if addon else None


class MeshdPreferences(bpy.types.AddonPreferences):
    bl_idname = __name__

    data_dir: bpy.props.StringProperty(
        name="Data dir",
        description="The meshd daemon's data dir (empty: $MESHD_DATA_DIR or ~/.local/share/meshd)",
        subtype="DIR_PATH",
        default="",
    )

    def draw(self, context):
        self.layout.prop(self, "data_dir")


class MeshdSettings(bpy.types.PropertyGroup):
    use_scene_range: bpy.props.BoolProperty(name="Scene frame range", default=True)
    frame_start: bpy.props.IntProperty(name="Start", default=1, min=0)
    frame_end: bpy.props.IntProperty(name="End", default=250, min=0)
    frame_step: bpy.props.IntProperty(name="Step", default=1, min=1)
    out_dir: bpy.props.StringProperty(
        name="Output", description="Where the frames go (empty: meshd-out/<name> next to the file)",
        subtype="DIR_PATH", default="")
    engine: bpy.props.EnumProperty(name="Engine", items=ENGINES, default="SCENE")
    file_format: bpy.props.EnumProperty(name="Format", items=FORMATS, default="Png")
    resolution_pct: bpy.props.IntProperty(name="Resolution %", default=0, min=0, max=1000,
                                          description="0: as in the file")
    samples: bpy.props.IntProperty(name="Samples", default=0, min=0, description="0: as in the file")
    gpu_only: bpy.props.BoolProperty(name="GPU only", default=False)
    priority: bpy.props.IntProperty(name="Priority", default=0)
    job_id: bpy.props.StringProperty(default="")
    job_name: bpy.props.StringProperty(default="")
    job_status: bpy.props.StringProperty(default="")


def frames_of(scene, s):
    start, end, step = (scene.frame_start, scene.frame_end, scene.frame_step) if s.use_scene_range \
        else (s.frame_start, s.frame_end, s.frame_step)
    if end < start:
        raise MeshdError("the end frame is before the start frame")
    return f"{start}-{end}" + (f"x{step}" if step > 1 else "")


def request_of(context):
    scene = context.scene
    s = scene.meshd
    path = bpy.data.filepath
    name = bpy.path.display_name_from_filepath(path) or "job"
    out = bpy.path.abspath(s.out_dir) if s.out_dir else os.path.join(os.path.dirname(path), "meshd-out", name)
    return {
        "path": path,
        "frames": frames_of(scene, s),
        "name": name,
        "out_dir": os.path.abspath(out),
        "settings": {
            "engine": None if s.engine == "SCENE" else s.engine,
            "format": s.file_format,
            "color_depth": None,
            "scene": scene.name,
            "camera": None,
            "resolution_pct": s.resolution_pct or None,
            "samples": s.samples or None,
            "device": {"gpu_only": s.gpu_only, "kind": None, "min_vram_mib": None},
            "allow_scripts": False,
            "allow_blank": False,
        },
        "priority": s.priority,
        "strict": False,
        "no_deps": False,
        "require_blender": None,
        "listed": listed(),
    }


def listed():
    """The open file's external files, found here with meshd's own walker (packaged with the
    add-on from meshd's sources): the daemon then needs no Blender of its own to find them,
    and an older one cannot misread a file this Blender saved. None if the walker is not
    there or fails: the daemon walks the file itself then."""
    try:
        from . import meshd_project
    except ImportError:
        return None
    try:
        return meshd_project.discovery()
    except Exception as e:
        print(f"meshd-addon: cannot list the file's dependencies here ({e}); the daemon will")
        return None


def refresh(prefs, s):
    """Reads the job's progress into the panel's properties; False once the job is over."""
    if not s.job_id:
        return False
    q = urllib.parse.urlencode({"job": s.job_id, "frames": "none"})
    jobs = call(prefs, "GET", f"/v1/status?{q}").get("jobs", [])
    if not jobs:
        s.job_status = "the daemon no longer knows this job"
        return False
    j = jobs[0]
    written = j.get("frames_written")
    here = f", {written} written" if written is not None else ""
    s.job_status = f"{j['state']}: {j['frames_done']}/{j['frames_total']} done{here}"
    if j.get("failure"):
        s.job_status += f" ({j['failure']})"
    return j["state"] in ("running", "paused") or (written is not None and written < j["frames_total"])


class MESHD_OT_submit(bpy.types.Operator):
    """Save the file and render it on the meshd mesh"""
    bl_idname = "meshd.submit"
    bl_label = "Render on meshd"

    def execute(self, context):
        if not bpy.data.filepath:
            self.report({"ERROR"}, "Save the file first: meshd renders a saved .blend")
            return {"CANCELLED"}
        try:
            if bpy.data.is_dirty:
                bpy.ops.wm.save_mainfile()
            prefs = prefs_of(context)
            resp = call(prefs, "POST", "/v1/jobs", request_of(context))
        except MeshdError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        s = context.scene.meshd
        s.job_id = resp["id"]
        s.job_name = resp["name"]
        s.job_status = f"submitted: {resp['frames_total']} frames -> {resp['out_dir']}"
        for m in resp.get("missing", []):
            self.report({"WARNING"}, f"missing: {m.get('path')}")
        self.report({"INFO"}, f"meshd job {resp['id'][:12]} ({resp['name']}): {resp['frames_total']} frames")
        print(f"meshd-addon: submitted {resp['id']}")
        if not bpy.app.background:
            bpy.app.timers.register(follow, first_interval=1.0)
        return {"FINISHED"}


class MESHD_OT_refresh(bpy.types.Operator):
    """Ask the daemon how the job goes"""
    bl_idname = "meshd.refresh"
    bl_label = "Refresh"

    def execute(self, context):
        try:
            refresh(prefs_of(context), context.scene.meshd)
        except MeshdError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        return {"FINISHED"}


def follow():
    """Timer: keeps the panel's status current while the job runs."""
    context = bpy.context
    try:
        going = refresh(prefs_of(context), context.scene.meshd)
    except MeshdError as e:
        context.scene.meshd.job_status = str(e)
        going = False
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PROPERTIES":
                area.tag_redraw()
    return 2.0 if going else None


class MESHD_PT_render(bpy.types.Panel):
    bl_label = "meshd"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"

    def draw(self, context):
        s = context.scene.meshd
        layout = self.layout
        layout.use_property_split = True
        layout.prop(s, "use_scene_range")
        if not s.use_scene_range:
            col = layout.column(align=True)
            col.prop(s, "frame_start")
            col.prop(s, "frame_end")
            col.prop(s, "frame_step")
        layout.prop(s, "out_dir")
        layout.prop(s, "engine")
        layout.prop(s, "file_format")
        layout.prop(s, "resolution_pct")
        layout.prop(s, "samples")
        layout.prop(s, "gpu_only")
        layout.prop(s, "priority")
        layout.operator(MESHD_OT_submit.bl_idname, icon="RENDER_ANIMATION")
        if s.job_id:
            box = layout.box()
            box.label(text=f"{s.job_name} ({s.job_id[:12]})")
            box.label(text=s.job_status)
            box.operator(MESHD_OT_refresh.bl_idname, icon="FILE_REFRESH")


CLASSES = (MeshdPreferences, MeshdSettings, MESHD_OT_submit, MESHD_OT_refresh, MESHD_PT_render)


def register():
    for c in CLASSES:
        bpy.utils.register_class(c)
    bpy.types.Scene.meshd = bpy.props.PointerProperty(type=MeshdSettings)


def unregister():
    if bpy.app.timers.is_registered(follow):
        bpy.app.timers.unregister(follow)
    del bpy.types.Scene.meshd
    for c in reversed(CLASSES):
        bpy.utils.unregister_class(c)
