"""Build a production-like test project: a shot that depends on files by every kind of path.

Usage:
    blender -b --factory-startup -noaudio --python scripts/make_test_project.py -- OUTDIR
        [--frames N] [--width W] [--height H] [--samples S]

Writes:
    OUTDIR/lib/textures/prop.png     the prop's texture, relative to the library (//textures/)
    OUTDIR/lib/prop.blend            a library: collection "Prop" (a textured plane)
    OUTDIR/textures/floor.png        used by the shot through an ABSOLUTE path
    OUTDIR/textures/udim/tile.1001.png, tile.1002.png
                                     a UDIM set (//../textures/udim/tile.<UDIM>.png)
    OUTDIR/textures/seq/seq_0001.png ... seq_000N.png
                                     an image sequence: frame k shows image k
    OUTDIR/shots/shot.blend          links "Prop" from //../lib/prop.blend (not appended) and
                                     uses the rest; Cycles, no denoising, PNG, frames 1..N

Every surface is an emission shader of its texture (closest-pixel lookup) seen by an
orthographic camera from above, so renders are noise-free at a few samples, and a missing file
(Blender's magenta) or a wrong one changes the image plainly. Each file has its own colour or
pattern: prop violet/white stripes, floor dark green stripes, tiles orange and cyan, one hue per
sequence frame. Layout from above (camera sees 4 units across):

    [ prop ]  [ UDIM 1001 | 1002 ]
          [ sequence ]             on the floor
Runs on Blender 3.4 to 5.0.
"""

import argparse
import colorsys
import os
import sys

import bpy

PROP_COLOUR = (0.55, 0.1, 0.95)
FLOOR_COLOUR = (0.15, 0.45, 0.2)
TILE_COLOURS = {1001: (1.0, 0.5, 0.0), 1002: (0.0, 0.75, 1.0)}


def seq_colour(k):
    """Frame k's colour: hues a golden-ratio step apart, all saturated (never magenta-like
    enough to pass for a missing texture: hue 0.83 is skipped)."""
    h = (0.02 + (k - 1) * 0.618034) % 1.0
    if 0.78 < h < 0.88:
        h = (h + 0.12) % 1.0
    return colorsys.hsv_to_rgb(h, 0.9, 1.0)


def parse_args():
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    p = argparse.ArgumentParser(prog="make_test_project.py")
    p.add_argument("out")
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--samples", type=int, default=4)
    a = p.parse_args(argv)
    if a.frames < 1 or a.width < 1 or a.height < 1 or a.samples < 1:
        p.error("--frames, --width, --height and --samples must be at least 1")
    return a


def write_png(path, rgb, size=16, stripes=False):
    """A small PNG of one colour (with white stripes if asked), written through Blender."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = bpy.data.images.new("tmp", size, size, alpha=False)
    px = []
    for _y in range(size):
        for x in range(size):
            c = (1.0, 1.0, 1.0) if stripes and (x // 4) % 2 == 0 else rgb
            px.extend((c[0], c[1], c[2], 1.0))
    img.pixels = px
    img.filepath_raw = path
    img.file_format = "PNG"
    img.save()
    bpy.data.images.remove(img)


def emission_material(name, image, image_user=None):
    mat = bpy.data.materials.new(name)
    if not getattr(mat, "node_tree", None):
        mat.use_nodes = True  # before 5.0 materials start without nodes
    nt = mat.node_tree
    for n in list(nt.nodes):
        nt.nodes.remove(n)
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    em = nt.nodes.new("ShaderNodeEmission")
    tex = nt.nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Closest"
    if image_user is not None:
        image_user(tex.image_user)
    nt.links.new(tex.outputs["Color"], em.inputs["Color"])
    nt.links.new(em.outputs["Emission"], out.inputs["Surface"])
    return mat


def plane(name, sx, sy, location, mat, u_span=1.0):
    """A rectangle sx by sy whose UVs run 0..u_span across and 0..1 up."""
    mesh = bpy.data.meshes.new(name)
    hx, hy = sx / 2, sy / 2
    mesh.from_pydata([(-hx, -hy, 0), (hx, -hy, 0), (hx, hy, 0), (-hx, hy, 0)], [], [(0, 1, 2, 3)])
    uv = mesh.uv_layers.new(name="UVMap")
    corners = [(0, 0), (u_span, 0), (u_span, 1), (0, 1)]
    for loop in mesh.loops:
        uv.data[loop.index].uv = corners[loop.vertex_index]
    mesh.update()
    mesh.materials.append(mat)
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    return obj


def empty_file():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.filepaths.save_version = 0  # no .blend1 backups


def build_library(out):
    empty_file()
    tex = os.path.join(out, "lib", "textures", "prop.png")
    write_png(tex, PROP_COLOUR, stripes=True)
    lib_path = os.path.join(out, "lib", "prop.blend")
    # Saved first, so that the texture's path can be relative to the library.
    bpy.ops.wm.save_as_mainfile(filepath=lib_path)
    img = bpy.data.images.load(tex)
    img.filepath = "//textures/prop.png"
    coll = bpy.data.collections.new("Prop")
    bpy.context.scene.collection.children.link(coll)
    coll.objects.link(plane("PropPlane", 1.0, 1.0, (0, 0, 0), emission_material("PropMat", img)))
    bpy.ops.wm.save_as_mainfile(filepath=lib_path)


def build_shot(out, a):
    empty_file()
    shot = os.path.join(out, "shots", "shot.blend")
    os.makedirs(os.path.dirname(shot), exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=shot)  # a home for the relative paths below
    scene = bpy.context.scene

    # The prop: collection "Prop" linked (not appended) by a relative path, instanced.
    lib = os.path.join(out, "lib", "prop.blend")
    with bpy.data.libraries.load(lib, link=True, relative=True) as (_src, dst):
        dst.collections = ["Prop"]
    inst = bpy.data.objects.new("PropInstance", None)
    inst.instance_type = "COLLECTION"
    inst.instance_collection = dst.collections[0]
    inst.location = (-1.2, 0.6, 0.1)
    scene.collection.objects.link(inst)

    # The floor, by an absolute path (saving rebases only paths that are already relative).
    floor_png = os.path.join(out, "textures", "floor.png")
    write_png(floor_png, FLOOR_COLOUR, stripes=True)
    floor_img = bpy.data.images.load(floor_png)
    floor_img.filepath = os.path.abspath(floor_png)
    scene.collection.objects.link(plane("Floor", 5.0, 5.0, (0, 0, 0), emission_material("FloorMat", floor_img)))

    # A UDIM set: one plane whose UVs span tiles 1001 and 1002.
    udim_dir = os.path.join(out, "textures", "udim")
    for n, rgb in TILE_COLOURS.items():
        write_png(os.path.join(udim_dir, "tile.%d.png" % n), rgb)
    udim = bpy.data.images.load(os.path.join(udim_dir, "tile.1001.png"))
    udim.source = "TILED"
    udim.filepath = "//../textures/udim/tile.<UDIM>.png"
    if not any(t.number == 1002 for t in udim.tiles):
        udim.tiles.new(tile_number=1002)
    udim.reload()
    scene.collection.objects.link(
        plane("UdimPlane", 1.8, 0.9, (0.8, 0.6, 0.1), emission_material("UdimMat", udim), u_span=2.0)
    )

    # An image sequence: frame k shows seq_000k.png.
    seq_dir = os.path.join(out, "textures", "seq")
    for k in range(1, a.frames + 1):
        write_png(os.path.join(seq_dir, "seq_%04d.png" % k), seq_colour(k))
    seq = bpy.data.images.load(os.path.join(seq_dir, "seq_0001.png"))
    seq.source = "SEQUENCE"
    seq.filepath = "//../textures/seq/seq_0001.png"

    def seq_user(iu):
        iu.frame_duration = a.frames
        iu.frame_start = 1
        iu.frame_offset = 0
        iu.use_auto_refresh = True

    scene.collection.objects.link(
        plane("SeqPlane", 1.0, 0.8, (0.0, -0.6, 0.1), emission_material("SeqMat", seq, seq_user))
    )

    cam_data = bpy.data.cameras.new("Camera")
    cam_data.type = "ORTHO"
    cam_data.ortho_scale = 4.0
    cam = bpy.data.objects.new("Camera", cam_data)
    cam.location = (0, 0, 5)
    scene.collection.objects.link(cam)
    scene.camera = cam

    # A light, as a real shot has one (the emission shaders do not depend on it).
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.location = (2, -2, 4)
    scene.collection.objects.link(sun)

    world = bpy.data.worlds.new("World")
    world.color = (0.05, 0.05, 0.05)
    scene.world = world

    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x, r.resolution_y, r.resolution_percentage = a.width, a.height, 100
    if hasattr(r.image_settings, "media_type"):  # 5.0: the media type first
        r.image_settings.media_type = "IMAGE"
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGB"
    scene.cycles.samples = a.samples
    scene.cycles.use_denoising = False
    if hasattr(scene.cycles, "use_adaptive_sampling"):
        scene.cycles.use_adaptive_sampling = False
    scene.cycles.max_bounces = 1
    scene.frame_start, scene.frame_end = 1, a.frames
    scene.frame_set(1)
    for layer in scene.view_layers:
        if hasattr(layer, "cycles"):
            layer.cycles.use_denoising = False
    # Plain colours: no filmic curve between the texture and the frame.
    scene.view_settings.view_transform = "Standard"
    bpy.ops.wm.save_as_mainfile(filepath=shot)


def main():
    a = parse_args()
    out = os.path.abspath(a.out)
    build_library(out)
    build_shot(out, a)


try:
    main()
except SystemExit:
    raise
except BaseException:  # Blender would print the traceback and still exit 0
    import traceback

    traceback.print_exc()
    sys.exit(1)
