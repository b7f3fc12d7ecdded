"""meshd's path helpers for Blender (embedded in the meshd binary, written out as
`meshd_paths.py` next to `meshd_project.py`): how Blender resolves the paths a .blend holds,
and the patterns that stand for groups of files (UDIM tiles, image sequences).
"""

import os
import posixpath
import re

import bpy

IMAGE_SOURCES = ("FILE", "SEQUENCE", "MOVIE", "TILED")
UDIM_TOKENS = ("<UDIM>", "<UVTILE>")
# On a POSIX machine a Windows path never exists: `C:\x`, `C:/x`, `\\server\share\x`.
FOREIGN = re.compile(r"^([A-Za-z]:[\\/]|\\\\)") if os.name != "nt" else re.compile(r"^$.")


def norm(p):
    """Absolute, normalised, '/' separators."""
    p = os.path.normpath(os.path.abspath(p))
    return p.replace(os.sep, "/") if os.sep != "/" else p


def is_foreign(p):
    return bool(FOREIGN.match(p))


def resolve(raw, base_blend):
    """Where Blender reads `raw` (as written in a datablock of the .blend `base_blend`).
    `//` is relative to that file (backslashes count as separators there); a Windows path on
    POSIX is reported as written, with '/'."""
    if raw.startswith("//"):
        rel = raw[2:].replace("\\", "/")
        return norm(os.path.join(os.path.dirname(base_blend), rel))
    if is_foreign(raw):
        return raw.replace("\\", "/")
    return norm(raw)


def library_path(lib):
    """A library's file. Blender rebases relative library paths, indirect ones included, onto
    the main file at load, so all of them resolve against the main file."""
    return resolve(lib.filepath, bpy.data.filepath)


def blend_of(id_):
    """The .blend that owns a datablock: its library's file if linked, else the main file."""
    lib = getattr(id_, "library", None)
    return library_path(lib) if lib is not None else bpy.data.filepath


def blend_stem(blend, strip_any_6=False):
    name = os.path.basename(blend)
    if strip_any_6:  # point caches: Blender drops the last 6 characters (".blend")
        return name[:-6] if len(name) > 6 else name
    return os.path.splitext(name)[0]


def bake_escape(name):
    """escape_name() of bake_geometry_nodes_modifier.cc: ASCII letters stay, every other byte
    becomes its number as a C `char` (signed on x86: "My:Obj" -> "My58Obj", "é" -> "-61-87")."""
    out = []
    for b in name.encode("utf-8", "surrogateescape"):
        if 65 <= b <= 90 or 97 <= b <= 122:
            out.append(chr(b))
        else:
            out.append(str(b - 256 if b >= 128 else b))
    return "".join(out)


def listdir(d):
    try:
        return sorted(os.listdir(d))
    except OSError:
        return []


def files_under(d):
    out = []
    for top, dirs, names in os.walk(d):
        dirs.sort()
        out.extend(norm(os.path.join(top, n)) for n in sorted(names))
    return out


def udim_regex(name):
    rx = re.escape(name)
    rx = rx.replace(re.escape("<UDIM>"), r"\d{4}").replace(re.escape("<UVTILE>"), r"u\d+_v\d+")
    return re.compile("^" + rx + "$")


def uvtile(number):
    return "u%d_v%d" % ((number - 1001) % 10 + 1, (number - 1001) // 10 + 1)


def tokenise_udim(path):
    """A TILED image path without a token (files from before 3.0) gets one, like Blender's
    BKE_image_ensure_tile_token: the 1001-like number in the file name."""
    if any(t in path for t in UDIM_TOKENS):
        return path
    d, name = posixpath.split(path)
    m = list(re.finditer(r"(?<!\d)(1\d{3})(?!\d)", name))
    if not m:
        return path
    s = m[-1]
    return posixpath.join(d, name[: s.start()] + "<UDIM>" + name[s.end() :])


def sequence_regex(name):
    """Blender's BLI_path_sequence_decode: the frame number is the last run of digits before
    the extension. None when the name has no digits (not a sequence)."""
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    m = re.search(r"(\d+)(\D*)$", stem)
    if not m:
        return None
    head, tail = stem[: m.start(1)], stem[m.end(1) :] + ext
    return re.compile("^" + re.escape(head) + r"\d+" + re.escape(tail) + "$")
