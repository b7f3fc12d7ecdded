"""Build meshd's small animated demo scene from scratch and save it as a .blend.

Usage:
    blender -b --factory-startup --python scripts/make_demo_scene.py -- OUT.blend
        [--frames N] [--width W] [--height H] [--samples S] [--black]

The scene: a camera, a sun and an area light, four coloured objects that move and
rotate over frames 1..N, and a blue-grey world, so every frame differs and none is
black. Cycles, denoising off (Debian's Blender has no OpenImageDenoise), PNG output.
Defaults: 24 frames, 320x180, 16 samples. Light bounces are kept low so a 64x48
frame with 4 samples renders in well under a second on a CPU.

--black builds the opposite: a black world and nothing else, so every frame is
entirely black (used to test that meshd rejects black frames).
"""

import argparse
import math
import sys

import bpy


def parse_args():
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    p = argparse.ArgumentParser(prog="make_demo_scene.py")
    p.add_argument("out", help="path of the .blend to write")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=180)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--black", action="store_true", help="black world, no objects, no lights")
    return p.parse_args(argv)


def clear_file():
    for coll in (bpy.data.objects, bpy.data.meshes, bpy.data.lights, bpy.data.cameras,
                 bpy.data.materials):
        for item in list(coll):
            coll.remove(item)


def use_nodes(idblock):
    """Node trees are always on in 5.0, where setting `use_nodes` is deprecated."""
    if bpy.app.version < (5, 0, 0) or idblock.node_tree is None:
        idblock.use_nodes = True


def material(name, rgb):
    mat = bpy.data.materials.new(name)
    use_nodes(mat)
    bsdf = mat.node_tree.nodes.get("Principled BSDF")
    if bsdf is not None:
        bsdf.inputs["Base Color"].default_value = (*rgb, 1.0)
        bsdf.inputs["Roughness"].default_value = 0.4
    mat.diffuse_color = (*rgb, 1.0)
    return mat


def add_mesh_object(scene, name, make, rgb):
    import bmesh

    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    make(bm)
    bm.to_mesh(mesh)
    bm.free()
    mesh.materials.append(material(name, rgb))
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    return obj


def animate(obj, frames, start_loc, end_loc, spin):
    obj.location = start_loc
    obj.rotation_euler = (0.0, 0.0, 0.0)
    obj.keyframe_insert("location", frame=1)
    obj.keyframe_insert("rotation_euler", frame=1)
    obj.location = end_loc
    obj.rotation_euler = (spin * 0.5, spin * 0.25, spin)
    last = max(frames, 2)
    obj.keyframe_insert("location", frame=last)
    obj.keyframe_insert("rotation_euler", frame=last)


def build(args):
    import bmesh

    clear_file()
    scene = bpy.context.scene
    scene.name = "Scene"

    world = bpy.data.worlds.get("World") or bpy.data.worlds.new("World")
    scene.world = world
    use_nodes(world)
    bg = world.node_tree.nodes.get("Background")
    color = (0.0, 0.0, 0.0) if args.black else (0.25, 0.35, 0.5)
    world.color = color
    if bg is not None:
        bg.inputs["Color"].default_value = (*color, 1.0)
        bg.inputs["Strength"].default_value = 0.0 if args.black else 1.0

    cam_data = bpy.data.cameras.new("Camera")
    cam = bpy.data.objects.new("Camera", cam_data)
    scene.collection.objects.link(cam)
    cam.location = (0.0, -9.0, 3.0)
    cam.rotation_euler = (math.radians(75.0), 0.0, 0.0)
    scene.camera = cam

    if not args.black:
        sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
        sun.data.energy = 3.0
        sun.rotation_euler = (math.radians(40.0), math.radians(20.0), 0.0)
        scene.collection.objects.link(sun)
        area = bpy.data.objects.new("Fill", bpy.data.lights.new("Fill", "AREA"))
        area.data.energy = 300.0
        area.data.size = 4.0
        area.location = (-3.0, -4.0, 5.0)
        scene.collection.objects.link(area)

        floor = add_mesh_object(
            scene, "Floor", lambda bm: bmesh.ops.create_grid(bm, x_segments=1, y_segments=1,
                                                             size=8.0), (0.8, 0.8, 0.75))
        floor.location = (0.0, 0.0, -1.0)
        cube = add_mesh_object(
            scene, "Cube", lambda bm: bmesh.ops.create_cube(bm, size=1.2), (0.9, 0.15, 0.1))
        sphere = add_mesh_object(
            scene, "Sphere",
            lambda bm: bmesh.ops.create_uvsphere(bm, u_segments=24, v_segments=12, radius=0.7),
            (0.1, 0.6, 0.9))
        cone = add_mesh_object(
            scene, "Cone",
            lambda bm: bmesh.ops.create_cone(bm, cap_ends=True, segments=16, radius1=0.7,
                                             radius2=0.0, depth=1.4),
            (0.95, 0.8, 0.1))
        ico = add_mesh_object(
            scene, "Ico", lambda bm: bmesh.ops.create_icosphere(bm, subdivisions=1, radius=0.6),
            (0.2, 0.8, 0.3))
        animate(cube, args.frames, (-3.0, 0.0, 0.0), (-1.0, 1.0, 0.5), math.pi * 2)
        animate(sphere, args.frames, (-1.0, 1.5, 1.5), (1.5, 0.0, 0.0), 0.0)
        animate(cone, args.frames, (1.5, 0.0, 0.0), (3.0, 1.0, 1.0), math.pi)
        animate(ico, args.frames, (3.0, -1.0, 1.0), (-2.5, -1.0, 1.5), -math.pi * 2)

    scene.frame_start = 1
    scene.frame_end = max(args.frames, 1)
    scene.frame_current = 1

    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x = args.width
    r.resolution_y = args.height
    r.resolution_percentage = 100
    r.film_transparent = False
    r.use_file_extension = True
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGB"
    r.image_settings.color_depth = "8"
    r.filepath = "//render/frame_####"

    c = scene.cycles
    c.device = "CPU"
    c.samples = args.samples
    c.preview_samples = args.samples
    if hasattr(c, "use_adaptive_sampling"):
        c.use_adaptive_sampling = False
    c.use_denoising = False
    c.max_bounces = 3
    c.diffuse_bounces = 2
    c.glossy_bounces = 2
    c.transmission_bounces = 2
    c.volume_bounces = 0
    c.transparent_max_bounces = 2
    c.caustics_reflective = False
    c.caustics_refractive = False
    for layer in scene.view_layers:
        if hasattr(layer, "cycles"):
            layer.cycles.use_denoising = False

    bpy.ops.wm.save_as_mainfile(filepath=args.out)
    print("make_demo_scene: wrote %s (%d frames, %dx%d, %d samples%s)" % (
        args.out, scene.frame_end, args.width, args.height, args.samples,
        ", black" if args.black else ""))


try:
    build(parse_args())
except SystemExit:
    raise
except BaseException:  # Blender exits 0 after a failed --python script unless told otherwise
    import traceback

    traceback.print_exc()
    sys.exit(1)
