"""meshd's project module (embedded in the meshd binary): a scene's external files.

One walker, two uses, so that what a renderer checks is exactly what was found at submit.
meshd writes it out as `meshd_project.py` with its siblings `meshd_paths.py` (how Blender
resolves paths; `project_paths.py` here) and `meshd_remap.py` (`project_remap.py`).

1. Discovery, on the submitting machine (scripts in the file stay off):

       blender -b --factory-startup -Y -noaudio SCENE.blend --python-exit-code 86 \\
           --python meshd_project.py -- --meshd-discover

   prints one line `@@MESHD@@ {"event": "deps", "blender": ..., "scene": ...,
   "deps": [{"path", "raw", "owner", "kind", "exists"}, ...], "errors": [...]}`.

2. Remap and verify, inside the render driver after the scene loaded:

       import meshd_remap
       problems = meshd_remap.prepare({"root_submit": ..., "root_here": ..., "files": [...]})

   points every path that meant a project file on the submitting machine at this machine's
   copy (in memory only: nothing is saved), then returns `missing dependency REL` for every
   file that existed at submit but does not resolve here. Files that were already missing at
   submit (not in `files`) may stay missing.

Blender facts this relies on (checked on 3.4, 4.2, 4.5 and 5.0):
- A `//` path is relative to the .blend that owns the datablock: a linked ID's library file.
- Relative `Library.filepath`s, indirect ones too, are rebased onto the MAIN file when it
  loads (readfile's fix_relpaths_library), so every library resolves against the main file.
- `lib.filepath = p; lib.reload()` relinks a library, indirect ones included; `image.filepath
  = p` reloads the image.
Works on Blender 3.4 to 5.0: what differs is looked up with getattr/hasattr.
"""

import json
import os
import posixpath
import re
import sys

# Discovery runs this file as Blender's --python script: its siblings import from its folder.
_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)

import bpy  # noqa: E402

from meshd_paths import (  # noqa: E402
    IMAGE_SOURCES,
    UDIM_TOKENS,
    norm,
    is_foreign,
    resolve,
    library_path,
    blend_of,
    blend_stem,
    bake_escape,
    listdir,
    files_under,
    udim_regex,
    uvtile,
    tokenise_udim,
    sequence_regex,
)

MARKER = "@@MESHD@@ "


# ---------------------------------------------------------------- the walk


class FileSet:
    """Files that one datablock stands for as a group: UDIM tiles, a sequence's frames, a
    cache directory. A renderer checks every member that existed at submit."""

    def __init__(self, directory, regex=None, recursive=False):
        self.directory = directory  # absolute, '/' separators
        self.regex = regex  # file names in `directory`; None: every file (recursive)
        self.recursive = recursive

    def members(self):
        if self.recursive:
            return files_under(self.directory) if os.path.isdir(self.directory) else []
        return [
            posixpath.join(self.directory, n)
            for n in listdir(self.directory)
            if self.regex.match(n) and os.path.isfile(os.path.join(self.directory, n))
        ]

    def holds(self, rel_name):
        """Whether a path relative to `directory` ('/' separators) belongs to the set."""
        if self.recursive:
            return True
        return "/" not in rel_name and bool(self.regex.match(rel_name))


class Walk:
    def __init__(self):
        self.deps = []
        self.seen = set()
        self.errors = []
        self.sets = []
        self.scene = norm(bpy.data.filepath) if bpy.data.filepath else ""

    def add(self, path, raw, owner, kind, exists=None):
        if path in self.seen or path == self.scene:
            return
        self.seen.add(path)
        try:
            (path + raw + owner).encode("utf-8")
        except UnicodeEncodeError:
            self.errors.append(
                "%s: file name is not valid UTF-8: %s"
                % (owner.encode("utf-8", "replace").decode(), path.encode("utf-8", "replace").decode())
            )
            return
        if exists is None:
            exists = not is_foreign(path) and os.path.isfile(path)
        self.deps.append({"path": path, "raw": raw, "owner": owner, "kind": kind, "exists": bool(exists)})

    def guard(self, what, fn, *args):
        try:
            fn(*args)
        except Exception as e:  # never fatal: the walker reports what it could not see
            self.errors.append("%s: %s: %s" % (what, e.__class__.__name__, e))

    # One path, a pattern or a directory, written in a datablock of the .blend `base`.

    def file(self, raw, base, owner, kind):
        if raw:
            self.add(resolve(raw, base), raw, owner, kind)

    def pattern(self, raw, base, owner, kind, regex_of, extra=()):
        """A UDIM set or a sequence: every existing member, or the path itself as missing."""
        if not raw:
            return
        path = resolve(raw, base)
        if is_foreign(path):
            self.add(path, raw, owner, kind, exists=False)
            return
        d, name = posixpath.split(path)
        rx = regex_of(name)
        if rx is None:  # no frame number: one file
            self.add(path, raw, owner, kind)
            return
        fs = FileSet(d, rx)
        self.sets.append(fs)
        found = set(fs.members())
        found.update(f for f in extra if os.path.isfile(f))
        if not found:
            self.add(path, raw, owner, kind, exists=False)
        for f in sorted(found):
            self.add(f, raw, owner, kind, exists=True)

    def directory(self, raw, base, owner, kind, regex=None):
        """A cache directory: every file in it (or those matching `regex`, not recursive);
        nothing if it does not exist (not baked is not an error)."""
        if not raw:
            return
        d = resolve(raw, base)
        if is_foreign(d):
            return
        fs = FileSet(d, regex, recursive=regex is None)
        self.sets.append(fs)
        for f in fs.members():
            self.add(f, raw, owner, kind, exists=True)


def describe(label, id_):
    """`Image "wood"`, or `Image "wood" (in library //../lib/prop.blend)` for linked data."""
    text = '%s "%s"' % (label, id_.name)
    lib = getattr(id_, "library", None)
    if lib is not None:
        text += " (in library %s)" % lib.filepath
    return text


def packed(id_):
    if getattr(id_, "packed_file", None) is not None:
        return True
    return len(getattr(id_, "packed_files", ()) or ()) > 0


def each(w, what, items, fn):
    """fn(item) for every item, each guarded on its own."""
    try:
        items = list(items)
    except Exception as e:
        w.errors.append("%s: %s: %s" % (what, e.__class__.__name__, e))
        return
    for item in items:
        label = getattr(item, "name", "?")
        w.guard('%s "%s"' % (what, label), fn, item)


def walk_libraries(w):
    def one(lib):
        if packed(lib) or getattr(lib, "is_archive", False):
            return
        parent = getattr(lib, "parent", None)
        owner = 'Library "%s"' % lib.name
        if parent is not None:
            owner += " (linked from library %s)" % parent.filepath
        w.add(library_path(lib), lib.filepath, owner, "library")

    each(w, "library", bpy.data.libraries, one)


def image_tile_paths(img, path):
    out = []
    for t in getattr(img, "tiles", ()):
        n = t.number
        out.append(path.replace("<UDIM>", str(n)).replace("<UVTILE>", uvtile(n)))
    return out


def walk_images(w):
    def one(img):
        if img.source not in IMAGE_SOURCES or packed(img) or not img.filepath:
            return
        raw, base, owner = img.filepath, blend_of(img), describe("Image", img)
        if img.source == "TILED" or any(t in raw for t in UDIM_TOKENS):
            raw_t = tokenise_udim(raw)
            path = resolve(raw_t, base)
            w.pattern(raw_t, base, owner, "udim", udim_regex, image_tile_paths(img, path))
        elif img.source == "SEQUENCE":
            w.pattern(raw, base, owner, "sequence", sequence_regex)
        else:
            w.file(raw, base, owner, "image")

    each(w, "image", bpy.data.images, one)


def walk_data(w):
    def simple(label, kind):
        def one(id_):
            raw = getattr(id_, "filepath", "")
            if not raw or raw == "<builtin>" or packed(id_):
                return
            w.file(raw, blend_of(id_), describe(label, id_), kind)

        return one

    each(w, "sound", getattr(bpy.data, "sounds", ()), simple("Sound", "sound"))
    each(w, "font", getattr(bpy.data, "fonts", ()), simple("Font", "font"))

    def text(t):
        if t.filepath and not getattr(t, "is_in_memory", False):
            w.file(t.filepath, blend_of(t), describe("Text", t), "text")

    each(w, "text", getattr(bpy.data, "texts", ()), text)

    def clip(c):
        if not c.filepath:
            return
        if getattr(c, "source", "") == "SEQUENCE":
            w.pattern(c.filepath, blend_of(c), describe("Movie clip", c), "movieclip", sequence_regex)
        else:
            w.file(c.filepath, blend_of(c), describe("Movie clip", c), "movieclip")

    each(w, "movie clip", getattr(bpy.data, "movieclips", ()), clip)

    def volume(v):
        if not v.filepath or packed(v):
            return
        if getattr(v, "is_sequence", False):
            w.pattern(v.filepath, blend_of(v), describe("Volume", v), "volume", sequence_regex)
        else:
            w.file(v.filepath, blend_of(v), describe("Volume", v), "volume")

    each(w, "volume", getattr(bpy.data, "volumes", ()), volume)

    def cache_file(c):
        base, owner = blend_of(c), describe("Cache file", c)
        if c.filepath:
            if getattr(c, "is_sequence", False):
                w.pattern(c.filepath, base, owner, "cachefile", sequence_regex)
            else:
                w.file(c.filepath, base, owner, "cachefile")
        for layer in getattr(c, "layers", ()):
            if getattr(layer, "filepath", ""):
                w.file(layer.filepath, base, owner + " layer", "cachefile")

    each(w, "cache file", getattr(bpy.data, "cache_files", ()), cache_file)


def ptcache_prefixes(cache, owner_id, external):
    """File-name prefixes of a point cache (BKE_pointcache ptcache_filepath): its name, or the
    owner's name in hex (each byte as C's `(uint)char`: signed on x86, unsigned on ARM)."""
    if cache.name or external:
        return [cache.name]
    raw = owner_id.name.encode("utf-8", "surrogateescape")
    unsigned = "".join("%02X" % b for b in raw)
    signed = "".join("%02X" % (b | 0xFFFFFF00 if b >= 128 else b) for b in raw)
    return sorted({unsigned, signed})


def walk_point_cache(w, owner_id, obj_label, pc, what):
    caches = list(getattr(pc, "point_caches", ()) or ()) or [pc]
    for c in caches:
        external = bool(getattr(c, "use_external", False))
        if not external and not getattr(c, "use_disk_cache", False):
            continue
        # ptcache_path: an external directory is relative to the main file; the default one
        # sits next to the owner's library unless "use_library_path" is off.
        if external or not getattr(c, "use_library_path", True):
            base = bpy.data.filepath
        else:
            base = blend_of(owner_id)
        if external:
            d = c.filepath
        else:
            d = "//blendcache_%s" % blend_stem(base, strip_any_6=True)
        prefixes = ptcache_prefixes(c, owner_id, external)
        rx = re.compile(
            "^(%s)_\\d+(_\\d+)?\\.[A-Za-z0-9]+$" % "|".join(re.escape(p) for p in prefixes)
        )
        w.directory(d, base, 'Point cache "%s" of %s' % (what, obj_label), "pointcache", rx)


def gn_bake_dirs(obj, md):
    """(raw directory, base .blend) of a geometry-nodes modifier's bakes on disk."""
    if getattr(md, "bake_target", "DISK") == "PACKED" and not any(
        getattr(b, "bake_target", "INHERIT") == "DISK" for b in getattr(md, "bakes", ())
    ):
        return []
    base = blend_of(obj)
    out = []
    d = getattr(md, "bake_directory", "") or getattr(md, "simulation_bake_directory", "")
    if not d:  # Blender sets it when it bakes; the default, should it be empty
        sim = "sim_" if not hasattr(md, "bake_directory") else ""  # 3.6 / 4.0: simulation nodes
        d = "//blendcache_%s/%s%s_%s" % (blend_stem(base), sim, bake_escape(obj.name), bake_escape(md.name))
    out.append(d)
    for b in getattr(md, "bakes", ()):
        if getattr(b, "use_custom_path", False) and getattr(b, "directory", ""):
            out.append(b.directory)
    return [(d, base) for d in out]


def walk_object(w, obj):
    label = describe("Object", obj)
    base = blend_of(obj)
    for md in obj.modifiers:
        t = md.type
        where = '%s (modifier "%s")' % (label, md.name)
        if t == "FLUID" and getattr(md, "fluid_type", "") == "DOMAIN" and md.domain_settings:
            w.directory(md.domain_settings.cache_directory, base, "Fluid cache of " + where, "fluid")
        elif t == "OCEAN" and getattr(md, "is_cached", False):
            w.directory(md.filepath, base, "Ocean cache of " + where, "ocean")
        elif t == "MESH_CACHE":
            w.file(md.filepath, base, "Mesh cache of " + where, "meshcache")
        elif t == "MULTIRES" and getattr(md, "is_external", False):
            w.file(md.filepath, base, "External multires data of " + where, "multires")
        elif t == "NODES":
            for d, b in gn_bake_dirs(obj, md):
                w.directory(d, b, "Geometry-nodes bake of " + where, "gnbake")
        elif t in ("CLOTH", "SOFT_BODY"):
            pc = getattr(md, "point_cache", None)
            if pc is not None:
                walk_point_cache(w, obj, label, pc, md.name)
        elif t == "DYNAMIC_PAINT":
            canvas = getattr(md, "canvas_settings", None)
            for surface in getattr(canvas, "canvas_surfaces", ()) if canvas else ():
                pc = getattr(surface, "point_cache", None)
                if pc is not None:
                    walk_point_cache(w, obj, label, pc, surface.name)
    for ps in getattr(obj, "particle_systems", ()):
        pc = getattr(ps, "point_cache", None)
        if pc is not None:
            walk_point_cache(w, obj, label, pc, ps.name)


def walk_objects(w):
    each(w, "object", bpy.data.objects, lambda obj: walk_object(w, obj))

    def rigid_body(scene):
        rbw = getattr(scene, "rigidbody_world", None)
        if rbw is not None and getattr(rbw, "point_cache", None) is not None:
            walk_point_cache(w, scene, describe("Scene", scene), rbw.point_cache, "Rigid body world")

    each(w, "scene", bpy.data.scenes, rigid_body)


def node_trees():
    """(owning ID, its label, node tree) for every tree that can hold IES/OSL nodes."""
    for coll, label in (("materials", "Material"), ("worlds", "World"), ("lights", "Light")):
        for id_ in getattr(bpy.data, coll, ()):
            tree = getattr(id_, "node_tree", None)
            if tree is not None:
                yield id_, label, tree
    for group in bpy.data.node_groups:
        yield group, "Node group", group


def walk_nodes(w):
    def one(item):
        id_, label, tree = item
        for node in tree.nodes:
            if node.bl_idname not in ("ShaderNodeTexIES", "ShaderNodeScript"):
                continue
            if getattr(node, "mode", "") != "EXTERNAL" or not node.filepath:
                continue
            kind = "ies" if node.bl_idname == "ShaderNodeTexIES" else "osl"
            owner = 'Node "%s" in %s' % (node.name, describe(label, id_))
            w.file(node.filepath, blend_of(id_), owner, kind)

    try:
        trees = list(node_trees())
    except Exception as e:
        w.errors.append("node trees: %s: %s" % (e.__class__.__name__, e))
        return
    for item in trees:
        w.guard('%s "%s"' % (item[1], item[0].name), one, item)

    def camera(cam):  # 4.5+: custom camera with an external OSL script
        if getattr(cam, "type", "") == "CUSTOM" and getattr(cam, "custom_mode", "") == "EXTERNAL":
            w.file(getattr(cam, "custom_filepath", ""), blend_of(cam), describe("Camera", cam), "osl")

    each(w, "camera", bpy.data.cameras, camera)


def strips_of(scene, top_level=False):
    """The strips of the scene's sequencer: all of them (inside meta strips too), or only
    the top-level ones."""
    ed = scene.sequence_editor
    if ed is None:
        return []
    # 4.4+ / before (5.0 has only the strips* names)
    names = ("strips", "sequences") if top_level else ("strips_all", "sequences_all")
    for attr in names:
        if hasattr(ed, attr):
            return list(getattr(ed, attr))
    return []


def join_dir(directory, name):
    if not directory or directory.endswith(("/", "\\")):
        return directory + name
    return directory + "/" + name


def walk_strips(w):
    def one(scene):
        base = blend_of(scene)
        for s in strips_of(scene):
            owner = 'Strip "%s" in %s' % (s.name, describe("Scene", scene))
            try:
                if s.type == "IMAGE":
                    for el in s.elements:
                        w.file(join_dir(s.directory, el.filename), base, owner, "strip")
                elif s.type == "MOVIE":
                    w.file(s.filepath, base, owner, "strip")
                elif s.type == "SOUND" and s.sound is not None and not packed(s.sound):
                    w.file(s.sound.filepath, blend_of(s.sound), owner, "strip")
            except Exception as e:
                w.errors.append("%s: %s: %s" % (owner, e.__class__.__name__, e))

    each(w, "scene", bpy.data.scenes, one)


def walk():
    w = Walk()
    for fn in (walk_libraries, walk_images, walk_data, walk_objects, walk_nodes, walk_strips):
        w.guard(fn.__name__, fn, w)
    return w


# ---------------------------------------------------------------- discovery


def emit(obj):
    try:  # Blender's own C-level prints must not land inside our line
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:
        pass
    sys.stdout.write(MARKER + json.dumps(obj) + "\n")
    sys.stdout.flush()


def discovery():
    """What the open file needs: the `deps` event. The add-on sends it with a job from the
    artist's Blender (the `listed` field of `POST /v1/jobs`)."""
    try:
        w = walk()
        deps, errors = w.deps, w.errors
    except Exception as e:  # walk() guards everything; this is only a last resort
        deps, errors = [], ["walk: %s: %s" % (e.__class__.__name__, e)]
    return {
        "event": "deps",
        "blender": bpy.app.version_string,
        "scene": norm(bpy.data.filepath) if bpy.data.filepath else "",
        "deps": deps,
        "errors": errors,
        "sizes": scene_sizes(),
        "active": bpy.context.scene.name if bpy.context.scene else None,
    }


def discover():
    emit(discovery())


def scene_sizes():
    """Each scene's output resolution settings (the submitter checks every frame it is sent
    against them: a frame of another size is no frame of this job) and cameras (a job that
    Blender would refuse to render is refused at submit)."""
    out = []
    for s in bpy.data.scenes:
        r = s.render
        out.append(
            {
                "name": s.name,
                "x": int(r.resolution_x),
                "y": int(r.resolution_y),
                "pct": int(r.resolution_percentage),
                "crop": bool(r.use_border and r.use_crop_to_border),
                "cameras": sorted(o.name for o in s.objects if o.type == "CAMERA"),
                "no_camera": camera_problem(s),
            }
        )
    return out


# ---------------------------------------------------------------- cameras
#
# Blender's own rule, as `blender -b FILE -a` applies it (render_pipeline.cc): a frame needs
# the scene camera unless the sequencer makes it, or the compositor makes it from no Render
# Layers node. (The render operator of the UI would fall back to the first camera of the view
# layer; the command line says "Cannot render, no camera", and so does meshd.)


def sequencer_renders(scene):
    """RE_seq_render_active: the sequencer is on and has a top-level strip other than sound."""
    return bool(scene.render.use_sequencer) and any(
        s.type != "SOUND" for s in strips_of(scene, top_level=True)
    )


def compositor_tree(scene):
    """The compositing node tree Blender runs, or None (5.0: compositing_node_group)."""
    if not scene.render.use_compositing:
        return None
    if hasattr(scene, "compositing_node_group"):
        return scene.compositing_node_group
    return scene.node_tree if getattr(scene, "use_nodes", False) else None


def camera_problem(scene):
    """Why Blender would refuse to render `scene` for want of a camera, or None."""
    if sequencer_renders(scene):
        return None
    tree = compositor_tree(scene)
    if tree is not None:
        for node in tree.nodes:
            if node.bl_idname == "CompositorNodeRLayers" and not node.mute:
                source = node.scene or scene
                if source.camera is None:
                    return "scene %r has no camera" % source.name
        return None
    return None if scene.camera is not None else "scene %r has no camera" % scene.name


def main():
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    if "--meshd-discover" in argv:
        discover()


if __name__ == "__main__":
    main()
