"""meshd's remap and verify step (embedded in the meshd binary, written out as
`meshd_remap.py`): run by the render driver after the scene loaded, it points every path
that meant a project file on the submitting machine at this machine's copy (in memory only:
nothing is saved) and lists the files that existed at submit but do not resolve here. See
`meshd_project.py` for the walk it shares with discovery.
"""

import os
import posixpath
import re
import sys

import bpy

from meshd_paths import IMAGE_SOURCES, UDIM_TOKENS, blend_of, is_foreign, library_path, norm, resolve
from meshd_project import node_trees, packed, strips_of, walk


WINDOWS_ROOT = re.compile(r"^([A-Za-z]:(/|$)|//[^/])")


def clean_root(p):
    """A project root as given: '/' separators, normalised; a Windows one (`C:/proj`,
    `\\\\server\\share`) stays as it is, as on the submitting machine."""
    p = str(p).replace("\\", "/")
    return posixpath.normpath(p) if WINDOWS_ROOT.match(p) else norm(p)


class Layout:
    def __init__(self, cfg):
        self.submit = clean_root(cfg["root_submit"])
        self.here = clean_root(cfg["root_here"])
        # A Windows submitter's paths compare without case.
        self.fold = bool(WINDOWS_ROOT.match(self.submit))
        self.files = set(cfg.get("files") or [])
        self.parents = set()  # directories that directly hold a file
        self.dirs = {""}  # every directory above a file
        self.by_dir = {}
        for f in self.files:
            d = posixpath.dirname(f)
            self.parents.add(d)
            self.by_dir.setdefault(d, []).append(f)
            while d:
                self.dirs.add(d)
                d = posixpath.dirname(d)

    @staticmethod
    def under(path, root, fold=False):
        """`path` relative to `root` ('' for the root itself), or None if outside."""
        p, r = (path.lower(), root.lower()) if fold else (path, root)
        if p == r:
            return ""
        r = r.rstrip("/") + "/"
        return path[len(r) :] if p.startswith(r) else None

    def rel(self, path):
        """A path as resolved here -> relative to the project root as the submitter saw it."""
        r = self.under(path, self.here)
        if r is not None:
            return r
        return self.under(path.replace("\\", "/"), self.submit, self.fold)

    def target(self, rel):
        return posixpath.join(self.here, rel) if rel else self.here

    def has_dir(self, rel_dir):
        return rel_dir in self.dirs


def remap_attr(layout, obj, attr, base, how="file"):
    """Points obj.attr (a path written in the .blend `base`) at this machine's copy if it
    meant a project file on the submitting machine. how: file | pattern | dir.
    Returns True when it changed something."""
    raw = getattr(obj, attr, "")
    if not raw:
        return False
    resolved = resolve(raw, base)
    rel = layout.rel(resolved)
    if rel is None:
        return False
    if how == "file":
        ok = rel in layout.files
    elif how == "pattern":
        ok = posixpath.dirname(rel) in layout.parents
    else:
        ok = layout.has_dir(rel.rstrip("/"))
    target = layout.target(rel)
    if not ok or target == resolved:
        return False
    if how == "dir" and raw.endswith(("/", "\\")):
        target += "/"
    try:
        setattr(obj, attr, target)
    except Exception:
        return False  # linked data may refuse edits; verify() tells if that matters
    return getattr(obj, attr, None) == target


def library_depth(lib):
    depth, p = 0, getattr(lib, "parent", None)
    while p is not None and depth < 64:
        depth, p = depth + 1, getattr(p, "parent", None)
    return depth


def remap_libraries(layout, problems_log):
    """Libraries first, one reload at a time, direct ones before the libraries they link: a
    reload can bring in (indirect) libraries that need remapping too, and can free others, so
    the list is read afresh after each."""
    tried = set()
    for _ in range(4 * len(bpy.data.libraries) + 16):
        todo = []
        for lib in bpy.data.libraries:
            if packed(lib) or getattr(lib, "is_archive", False) or not lib.filepath:
                continue
            resolved = library_path(lib)
            rel = layout.rel(resolved)
            if rel is None or rel not in layout.files:
                continue
            target = layout.target(rel)
            key = (lib.name, lib.filepath, target)
            if resolved != target and key not in tried:
                todo.append((library_depth(lib), lib.name, lib, target, key))
        if not todo:
            return
        todo.sort(key=lambda t: (t[0], t[1]))
        _, name, lib, target, key = todo[0]
        tried.add(key)
        try:
            lib.filepath = target
            lib.reload()
        except Exception as e:  # RuntimeError for a path Blender cannot read
            problems_log.append('library "%s": %s' % (name, e))


def remap(layout):
    log = []
    remap_libraries(layout, log)

    for img in list(bpy.data.images):
        try:
            if img.source not in IMAGE_SOURCES or packed(img):
                continue
            pattern = img.source in ("TILED", "SEQUENCE") or any(t in img.filepath for t in UDIM_TOKENS)
            remap_attr(layout, img, "filepath", blend_of(img), "pattern" if pattern else "file")
        except Exception as e:
            log.append('image "%s": %s' % (img.name, e))

    def each_id(coll, fn):
        for id_ in list(getattr(bpy.data, coll, ())):
            try:
                fn(id_)
            except Exception as e:
                log.append('%s "%s": %s' % (coll, id_.name, e))

    def plain(id_, how="file"):
        if packed(id_) or getattr(id_, "filepath", "") == "<builtin>":
            return
        remap_attr(layout, id_, "filepath", blend_of(id_), how)

    each_id("sounds", plain)
    each_id("fonts", plain)
    each_id("texts", lambda t: None if getattr(t, "is_in_memory", False) else plain(t))
    each_id("movieclips", lambda c: plain(c, "pattern" if c.source == "SEQUENCE" else "file"))
    each_id("volumes", lambda v: plain(v, "pattern" if getattr(v, "is_sequence", False) else "file"))

    def cache_file(c):
        plain(c, "pattern" if getattr(c, "is_sequence", False) else "file")
        for layer in getattr(c, "layers", ()):
            remap_attr(layout, layer, "filepath", blend_of(c))

    each_id("cache_files", cache_file)

    def obj(o):
        base = blend_of(o)
        for md in o.modifiers:
            t = md.type
            if t == "FLUID" and getattr(md, "fluid_type", "") == "DOMAIN" and md.domain_settings:
                remap_attr(layout, md.domain_settings, "cache_directory", base, "dir")
            elif t == "OCEAN":
                remap_attr(layout, md, "filepath", base, "dir")
            elif t in ("MESH_CACHE", "MULTIRES"):
                remap_attr(layout, md, "filepath", base)
            elif t == "NODES":
                for attr in ("bake_directory", "simulation_bake_directory"):
                    if hasattr(md, attr):
                        remap_attr(layout, md, attr, base, "dir")
                for b in getattr(md, "bakes", ()):
                    if getattr(b, "use_custom_path", False):
                        remap_attr(layout, b, "directory", base, "dir")
            pcs = []
            if t in ("CLOTH", "SOFT_BODY"):
                pcs.append(getattr(md, "point_cache", None))
            elif t == "DYNAMIC_PAINT" and getattr(md, "canvas_settings", None):
                pcs.extend(getattr(s, "point_cache", None) for s in md.canvas_settings.canvas_surfaces)
            for pc in pcs:
                remap_point_cache(layout, pc)
        for ps in getattr(o, "particle_systems", ()):
            remap_point_cache(layout, getattr(ps, "point_cache", None))

    each_id("objects", obj)

    def node_paths(item):
        id_, _, tree = item
        for node in tree.nodes:
            if node.bl_idname in ("ShaderNodeTexIES", "ShaderNodeScript") and getattr(node, "mode", "") == "EXTERNAL":
                remap_attr(layout, node, "filepath", blend_of(id_))

    for item in list(node_trees()):
        try:
            node_paths(item)
        except Exception as e:
            log.append('node tree of "%s": %s' % (item[0].name, e))
    each_id("cameras", lambda c: remap_attr(layout, c, "custom_filepath", blend_of(c)) if hasattr(c, "custom_filepath") else None)

    def scene_strips(scene):
        base = blend_of(scene)
        for s in strips_of(scene):
            if s.type == "IMAGE":
                remap_attr(layout, s, "directory", base, "dir")
            elif s.type == "MOVIE":
                remap_attr(layout, s, "filepath", base)

    each_id("scenes", scene_strips)
    return log


def remap_point_cache(layout, pc):
    if pc is None:
        return
    for c in list(getattr(pc, "point_caches", ()) or ()) or [pc]:
        if getattr(c, "use_external", False):
            remap_attr(layout, c, "filepath", bpy.data.filepath, "dir")


def verify(layout):
    problems = []

    def problem(msg):
        if msg not in problems:
            problems.append(msg)

    w = walk()
    missing_here = set()
    for d in w.deps:
        rel = layout.rel(d["path"])
        if rel is None or rel not in layout.files:
            continue  # missing at submit already (the user was told then), or not the project's
        if is_foreign(d["path"]) or not os.path.isfile(d["path"]):
            missing_here.add(rel)
            problem("missing dependency %s" % rel)
    # Every tile, frame or cache file of a set that existed at submit must be here too: the
    # walk above only sees the members that exist.
    for fs in w.sets:
        rel_dir = layout.rel(fs.directory)
        if rel_dir is None:
            continue
        rel_dir = rel_dir.rstrip("/")
        if fs.recursive:
            prefix = rel_dir + "/" if rel_dir else ""
            members = [f for f in layout.files if f.startswith(prefix)] if layout.has_dir(rel_dir) else []
        else:
            members = layout.by_dir.get(rel_dir, [])
        for f in sorted(members):
            name = f[len(rel_dir) + 1 :] if rel_dir else f
            if fs.holds(name) and not os.path.isfile(posixpath.join(fs.directory, name)):
                missing_here.add(f)
                problem("missing dependency %s" % f)
    for lib in list(bpy.data.libraries):
        if packed(lib) or getattr(lib, "is_archive", False):
            continue
        path = library_path(lib)
        missing = getattr(lib, "is_missing", None)
        if missing is None:  # before 4.0
            missing = is_foreign(path) or not os.path.isfile(path)
        rel = layout.rel(path)
        if missing and rel in layout.files:
            problem("missing dependency %s" % rel)
    for img in list(bpy.data.images):
        try:
            if img.source != "FILE" or packed(img) or not img.filepath:
                continue
            path = resolve(img.filepath, blend_of(img))
            rel = layout.rel(path)
            if rel is None or rel not in layout.files or rel in missing_here:
                continue
            if tuple(img.size) == (0, 0):  # reading size loads the pixels
                problem('unreadable dependency %s (Image "%s" has no pixels)' % (rel, img.name))
        except Exception as e:
            problem('cannot check Image "%s": %s' % (img.name, e))
    return problems


def prepare(cfg):
    """Remap the loaded scene's paths into this machine's copy of the project and return the
    problems: [] when every file that existed at submit resolves here."""
    layout = Layout(cfg)
    scene = layout.rel(norm(bpy.data.filepath)) if bpy.data.filepath else None
    if not (layout.files - {scene}):
        return []  # nothing but the scene was sent: nothing to remap or check
    for note in remap(layout):  # what could not be pointed here; verify() says if it matters
        sys.stderr.write("meshd_project: remap: %s\n" % note)
    return verify(layout)
