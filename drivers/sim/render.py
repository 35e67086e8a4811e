"""Pure NumPy/OpenCV renderer for the simulated workcell (no GL, one core, >= 200 frames/s).

A pinhole camera projects a textured table (one homography warp, cached per reset for the
fixed front camera), blob shadows, shaded boxes (cubes, gripper hand and fingers), a bowl and
the arm links as shaded thick lines, drawn far to near (painter's order). Coordinates use
4 bits of sub-pixel precision so small motions still change the image smoothly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

CUBE = 0.04           # cube edge (m)
BOWL_R = 0.075        # bowl rim radius (m)
BOWL_FOOT = 0.045     # bowl foot radius (m)
BOWL_H = 0.045        # bowl height (m)
TABLE_X = (-0.35, 1.0)
TABLE_Y = (-0.7, 0.7)
PLATE_R, PLATE_H = 0.07, 0.012   # plate radius / height (physics scenes)
SPOT_R = 0.03                    # marked spot radius (push target)
_SHIFT = 4
_SCALE = 1 << _SHIFT
_TEX = 1024


@dataclass
class Style:
    """Everything domain randomisation may change; fixed for one episode (set at reset)."""
    light_dir: np.ndarray = field(default_factory=lambda: _unit([0.35, 0.45, 1.0]))
    ambient: float = 0.45
    diffuse: float = 0.6
    brightness: float = 1.0
    table_rgb: tuple = (186, 150, 112)
    floor_rgb: tuple = (70, 72, 78)
    red_rgb: tuple = (205, 30, 30)
    blue_rgb: tuple = (30, 70, 210)
    bowl_rgb: tuple = (60, 160, 95)
    arm_rgb: tuple = (226, 226, 230)
    eye_offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    target_offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    fov_offset: float = 0.0
    noise: bool = False
    noise_seed: int = 0


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def style_rng(seed: int) -> np.random.Generator:
    """The random stream a workcell draws scene `seed`'s Style from (make_style), in both backends; the
    same call rebuilds a recorded episode's look, camera jitter included, from its seed."""
    return np.random.default_rng([int(seed), 7])


# table tops domain randomisation draws from (+-15 per channel): wood and grey tones, and the dark benches labs
# often have (black, dark grey, dark walnut). Without the dark ones a policy lost nearly everything on a dark
# table: the held-out look with only its dark blue-grey table put back to the default wood gave 49/50, with a
# dark neutral grey table 7/50 (docs/policy_results.md, "A dark table")
TABLE_TONES = ((186, 150, 112), (160, 160, 155), (120, 95, 70), (205, 200, 185), (140, 150, 165),
               (42, 42, 46), (66, 66, 58), (88, 62, 44))


def make_style(rng: np.random.Generator, light: bool, colors: bool, camera_jitter: bool,
               noise: bool) -> Style:
    """Draw a randomised Style; switches off -> the default look."""
    s = Style()
    if light:
        s.light_dir = _unit([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), rng.uniform(0.6, 1.4)])
        s.ambient = rng.uniform(0.3, 0.6)
        s.diffuse = rng.uniform(0.4, 0.75)
        s.brightness = rng.uniform(0.75, 1.2)
    if colors:
        t = np.array(TABLE_TONES[rng.integers(len(TABLE_TONES))], dtype=float) + rng.uniform(-15, 15, 3)
        s.table_rgb = tuple(np.clip(t, 0, 255))
        j = lambda c, a: tuple(np.clip(np.array(c, float) + rng.uniform(-a, a, 3), 0, 255))
        s.red_rgb = j((205, 30, 30), 20)     # small jitter keeps red red, blue blue
        s.blue_rgb = j((30, 70, 210), 20)
        s.bowl_rgb = j((60, 160, 95), 25)
        s.floor_rgb = j((70, 72, 78), 25)
    if camera_jitter:
        s.eye_offset = rng.uniform(-0.025, 0.025, 3)
        s.target_offset = rng.uniform(-0.02, 0.02, 3)
        s.fov_offset = rng.uniform(-2.0, 2.0)
    s.noise = noise
    s.noise_seed = int(rng.integers(1 << 30))
    return s


class PinholeCamera:
    """World -> pixel projection. Rows of `r` are the camera right, down and forward axes."""

    def __init__(self, eye, target, up, fov_deg: float, width: int, height: int):
        self.eye = np.asarray(eye, dtype=float)
        f = _unit(np.asarray(target, dtype=float) - self.eye)
        right = _unit(np.cross(f, up))
        down = np.cross(f, right)
        self.r = np.stack([right, down, f])
        self.t = -self.r @ self.eye
        self.f = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
        self.w, self.h = width, height
        self.k = np.array([[self.f, 0, width / 2], [0, self.f, height / 2], [0, 0, 1.0]])

    def project(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = p @ self.r.T + self.t
        z = c[:, 2]
        zs = np.where(z > 1e-3, z, 1e-3)
        uv = np.empty((len(p), 2))
        uv[:, 0] = c[:, 0] * self.f / zs + self.w / 2
        uv[:, 1] = c[:, 1] * self.f / zs + self.h / 2
        return uv, z

    def depth(self, p) -> float:
        """Distance of point p along the optical axis."""
        r = self.r[2]
        return float(r[0] * p[0] + r[1] * p[1] + r[2] * p[2] + self.t[2])

    def table_homography(self) -> np.ndarray:
        """Texture pixel -> image pixel homography for the table plane z = 0."""
        sx = (TABLE_X[1] - TABLE_X[0]) / _TEX
        sy = (TABLE_Y[1] - TABLE_Y[0]) / _TEX
        # texture column u runs along +y, row v along +x (so the table reads naturally from the front)
        a = np.array([[0, sx, TABLE_X[0]], [sy, 0, TABLE_Y[0]], [0, 0, 1.0]])
        m = np.column_stack([self.r[:, 0], self.r[:, 1], self.t])
        return self.k @ m @ a


def front_camera(style: Style, width: int, height: int) -> PinholeCamera:
    eye = np.array([0.95, 0.12, 0.80]) + style.eye_offset
    target = np.array([0.43, 0.0, 0.13]) + style.target_offset
    return PinholeCamera(eye, target, [0, 0, 1.0], 46.0 + style.fov_offset, width, height)


def wrist_camera(tcp: np.ndarray, width: int, height: int) -> PinholeCamera:
    """Camera on the hand, 12 cm above the TCP and 6 cm behind it, looking down past the fingers."""
    r, p = tcp[:3, :3], tcp[:3, 3]
    eye = p + r @ np.array([-0.07, 0.0, -0.15])
    target = p + r @ np.array([0.0, 0.0, 0.10])
    return PinholeCamera(eye, target, -r[:, 0], 70.0, width, height)


def view_camera(view: str, style: Style, tcp: np.ndarray, width: int, height: int) -> PinholeCamera:
    """The camera of a view ('front' fixed in the cell, 'wrist' on the hand at the TCP pose `tcp`, 4x4)."""
    if view == "front":
        return front_camera(style, width, height)
    if view == "wrist":
        return wrist_camera(tcp, width, height)
    raise ValueError(f"unknown camera view {view!r}; use 'front' or 'wrist'")


_BASE_TEX: np.ndarray | None = None


def _base_texture() -> np.ndarray:
    """Grey-level wood-ish grain with faint tile lines (float32, mean ~1), built once."""
    global _BASE_TEX
    if _BASE_TEX is None:
        rng = np.random.default_rng(1234)
        small = rng.normal(0, 1, (64, 64)).astype(np.float32)
        n = cv2.resize(small, (_TEX, _TEX), interpolation=cv2.INTER_CUBIC) * 0.03
        grain = rng.normal(0, 1, (_TEX, 8)).astype(np.float32)
        grain = cv2.resize(grain, (_TEX, _TEX), interpolation=cv2.INTER_LINEAR) * 0.04
        tex = 1.0 + n + grain
        step = _TEX // 10
        tex[::step, :] *= 0.82
        tex[:, ::step] *= 0.82
        tex[:, :6] *= 0.6; tex[:, -6:] *= 0.6; tex[:6, :] *= 0.6; tex[-6:, :] *= 0.6
        _BASE_TEX = tex
    return _BASE_TEX


def _box_faces():
    # corner index bits: x(1) y(2) z(4); faces listed with outward normals
    faces = [([0, 2, 6, 4], (-1, 0, 0)), ([1, 5, 7, 3], (1, 0, 0)), ([0, 4, 5, 1], (0, -1, 0)),
             ([2, 3, 7, 6], (0, 1, 0)), ([0, 1, 3, 2], (0, 0, -1)), ([4, 6, 7, 5], (0, 0, 1))]
    corners = np.array([[(i & 1) * 2 - 1, (i >> 1 & 1) * 2 - 1, (i >> 2 & 1) * 2 - 1]
                        for i in range(8)], dtype=float)
    return corners, [f[0] for f in faces], np.array([f[1] for f in faces], dtype=float)


_CORNERS, _FACES, _NORMALS = _box_faces()
_FACES = [np.array(f) for f in _FACES]
_FACE_AXIS = np.array([0, 0, 1, 1, 2, 2])
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 24, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False))], axis=1)


@dataclass
class Snapshot:
    """The state render() needs, copied under the workcell lock."""
    frames: list            # arm chain frames (joint1..7, flange, TCP), 4x4 each
    grip: float             # gripper fraction open
    cubes: dict             # name -> (pos (3,), yaw)
    bowl: np.ndarray
    colors: dict            # name -> rgb
    # physics scenes: (kind 'box'|'cylinder'|'prism', pos, 3x3 rot, half sizes, rgb) per object
    bodies: list = field(default_factory=list)
    plate: np.ndarray | None = None
    spot: np.ndarray | None = None


class Renderer:
    def __init__(self, style: Style | None = None):
        self.style = style or Style()
        self._cache: dict = {}

    def set_style(self, style: Style) -> None:
        self.style = style
        self._cache.clear()

    # ---- per-style cached pieces -------------------------------------------------------
    def _table_tex(self) -> np.ndarray:
        key = "tex"
        if key not in self._cache:
            s = self.style
            col = np.array(s.table_rgb, np.float32) * s.brightness * (s.ambient + s.diffuse * s.light_dir[2])
            tex = _base_texture()[:, :, None] * col[None, None, :]
            self._cache[key] = np.clip(tex, 0, 255).astype(np.uint8)
        return self._cache[key]

    def _background(self, cam: PinholeCamera, static: bool) -> np.ndarray:
        key = ("bg", cam.w, cam.h)
        if static and key in self._cache:
            return self._cache[key].copy()
        s = self.style
        fkey = ("floor", cam.w, cam.h)
        if fkey not in self._cache:         # the floor gradient, same for every camera pose
            fl = np.array(s.floor_rgb, np.float32) * s.brightness
            ramp = np.linspace(0.7, 1.05, cam.h, dtype=np.float32)[:, None, None]
            self._cache[fkey] = np.ascontiguousarray(np.broadcast_to(
                np.clip(ramp * fl[None, None, :], 0, 255).astype(np.uint8), (cam.h, cam.w, 3)))
        img = self._cache[fkey].copy()
        # only pixels whose viewing ray points down can see the table; the homography would
        # also map the plane *behind* the camera (mirrored) onto the others
        kinv = np.linalg.inv(cam.k)
        ray_z = (cam.r.T @ kinv)[2]                   # world z of the ray through (u, v, 1)
        corners = np.array([[0, 0, 1], [cam.w, 0, 1], [0, cam.h, 1], [cam.w, cam.h, 1.0]])
        dz = corners @ ray_z
        above = cam.eye[2] > 0
        if above and (dz < 0).all():
            cv2.warpPerspective(self._table_tex(), cam.table_homography(), (cam.w, cam.h), dst=img,
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
        elif above and (dz < 0).any():
            sky = img.copy()
            cv2.warpPerspective(self._table_tex(), cam.table_homography(), (cam.w, cam.h), dst=img,
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
            u = np.arange(cam.w) + 0.5
            v = np.arange(cam.h)[:, None] + 0.5
            mask = (ray_z[0] * u + ray_z[1] * v + ray_z[2]) >= 0
            img[mask] = sky[mask]
        if static:
            self._cache[key] = img.copy()
        return img

    def _noise(self, w: int, h: int, idx: int):
        key = ("noise", w, h)
        if key not in self._cache:
            rng = np.random.default_rng(self.style.noise_seed)
            bank = []
            for _ in range(6):
                n = rng.normal(0, 5.0, (h, w, 3))
                bank.append((np.clip(n, 0, 255).astype(np.uint8), np.clip(-n, 0, 255).astype(np.uint8)))
            self._cache[key] = bank
        bank = self._cache[key]
        return bank[idx % len(bank)]

    # ---- drawing ---------------------------------------------------------------------
    def _shade(self, rgb, n: np.ndarray) -> np.ndarray:
        s = self.style
        k = s.brightness * (s.ambient + s.diffuse * np.clip(n @ s.light_dir, 0, None))
        return np.clip(np.asarray(rgb, float)[None, :] * k[:, None], 0, 255)

    def render(self, snap: Snapshot, view: str, width: int, height: int, frame_index: int = 0) -> np.ndarray:
        tcp = snap.frames[-1]
        cam = view_camera(view, self.style, tcp, width, height)
        img = self._background(cam, static=view == "front")
        prims: list = []   # (depth, draw-callable-args)
        s = self.style

        if snap.spot is not None:          # the marked spot: painted on the table
            sp = snap.spot
            lit = s.brightness * (s.ambient + s.diffuse * s.light_dir[2])
            for rad, rgb in ((SPOT_R, (235, 235, 235)), (SPOT_R - 0.007, (200, 40, 160)),
                             (SPOT_R - 0.016, (235, 235, 235))):
                uv, z = cam.project(np.column_stack([_CIRCLE * rad + sp[:2], np.full(24, 0.0003)]))
                if (z > 0.02).all():
                    cv2.fillConvexPoly(img, np.round(uv * _SCALE).astype(np.int32),
                                       tuple(min(255.0, c * lit) for c in rgb), cv2.LINE_AA, _SHIFT)

        # shadows (flat on the table, drawn first)
        shadow = tuple(float(c) * 0.55 * s.brightness * (s.ambient + s.diffuse * s.light_dir[2])
                       for c in s.table_rgb)
        sh_pts = []
        for pos, yaw in snap.cubes.values():
            c, sn = math.cos(yaw), math.sin(yaw)
            r = np.array([[c, -sn], [sn, c]])
            off = -s.light_dir[:2] / s.light_dir[2] * max(pos[2] - CUBE / 2, 0.0)
            foot = (_CORNERS[[0, 1, 3, 2], :2] * (CUBE / 2 * 1.05)) @ r.T + pos[:2] + off
            sh_pts.append(np.column_stack([foot, np.full(4, 0.0005)]))
        for kind, pos, rot, half, _ in snap.bodies:
            low = pos[2] - half[-1]
            off = -s.light_dir[:2] / s.light_dir[2] * max(low, 0.0)
            if kind == "box":
                foot = (_CORNERS[[0, 1, 3, 2], :2] * np.asarray(half[:2]) * 1.05) @ rot[:2, :2].T
            else:
                foot = _CIRCLE[::2] * half[0] * 1.05
            sh_pts.append(np.column_stack([foot + pos[:2] + off, np.full(len(foot), 0.0005)]))
        if tcp[2, 3] > 0.0:
            off = -s.light_dir[:2] / s.light_dir[2] * tcp[2, 3]
            ring = _CIRCLE * 0.03 * (1 + tcp[2, 3]) + tcp[:2, 3] + off
            sh_pts.append(np.column_stack([ring, np.full(len(ring), 0.0005)]))
        for pts in sh_pts:
            uv, z = cam.project(pts)
            if (z > 0.02).all():
                cv2.fillConvexPoly(img, np.round(uv * _SCALE).astype(np.int32), shadow,
                                   cv2.LINE_AA, _SHIFT)

        # bowl
        b = snap.bowl
        rim = np.column_stack([_CIRCLE * BOWL_R + b[:2], np.full(24, b[2] + BOWL_H)])
        foot = np.column_stack([_CIRCLE * BOWL_FOOT + b[:2], np.full(24, b[2])])
        inner = np.column_stack([_CIRCLE * (BOWL_R - 0.006) + b[:2], np.full(24, b[2] + BOWL_H)])
        floor = np.column_stack([_CIRCLE * (BOWL_FOOT - 0.01) + b[:2], np.full(24, b[2] + 0.012)])
        bowl_pts = np.concatenate([rim, foot, inner, floor])
        bowl_depth = cam.depth(b + [0, 0, BOWL_H / 2]) + 0.02
        prims.append((bowl_depth, "bowl", bowl_pts))
        if snap.plate is not None:
            pl = snap.plate
            top = np.column_stack([_CIRCLE * PLATE_R + pl[:2], np.full(24, PLATE_H)])
            bot = np.column_stack([_CIRCLE * (PLATE_R - 0.004) + pl[:2], np.full(24, 0.0)])
            inner = np.column_stack([_CIRCLE * (PLATE_R - 0.015) + pl[:2], np.full(24, PLATE_H)])
            prims.append((cam.depth(pl) + 0.03, "plate", np.concatenate([top, bot, inner])))
        for kind, pos, rot, half, rgb in snap.bodies:
            depth = cam.depth(pos)
            if np.hypot(*(pos[:2] - b[:2])) < BOWL_R and pos[2] < b[2] + BOWL_H + half[-1]:
                depth = bowl_depth - 0.01      # resting in the bowl: draw after the bowl
            if snap.plate is not None and np.hypot(*(pos[:2] - snap.plate[:2])) < PLATE_R + 0.01:
                depth = min(depth, cam.depth(snap.plate) + 0.02)
            if kind == "box":
                prims.append((depth, "box", (np.asarray(pos), rot, np.asarray(half), rgb)))
            else:
                prims.append((depth, "cyl", (np.asarray(pos), rot, half[0], half[1], rgb,
                                             6 if kind == "prism" else 16)))

        # cubes
        for name, (pos, yaw) in snap.cubes.items():
            c, sn = math.cos(yaw), math.sin(yaw)
            rot = np.array([[c, -sn, 0], [sn, c, 0], [0, 0, 1.0]])
            depth = cam.depth(pos)
            if np.hypot(*(pos[:2] - b[:2])) < BOWL_R and pos[2] < b[2] + BOWL_H + CUBE / 2:
                depth = prims[0][0] - 0.01    # resting in the bowl: draw after the bowl
            prims.append((depth, "box", (np.asarray(pos), rot, np.full(3, CUBE / 2), snap.colors[name])))

        # gripper: fingers (+ hand and arm links in the front view)
        r, p = tcp[:3, :3], tcp[:3, 3]
        half_open = 0.04 * float(np.clip(snap.grip, 0, 1))
        for sgn in (-1, 1):
            fc = p + r @ np.array([0.0, sgn * (half_open + 0.009), -0.0175])
            prims.append((cam.depth(fc), "box",
                          (fc, r, np.array([0.011, 0.009, 0.0275]), (105, 105, 112))))
        if view == "front":
            hc = p + r @ np.array([0.0, 0.0, -0.075])
            prims.append((cam.depth(hc), "box",
                          (hc, r, np.array([0.026, 0.088, 0.028]), s.arm_rgb)))
            f = snap.frames
            pts = [np.zeros(3), np.array([0, 0, 0.2]), f[1][:3, 3], f[2][:3, 3], f[3][:3, 3], f[4][:3, 3],
                   f[5][:3, 3], f[6][:3, 3], f[7][:3, 3] - f[7][:3, 2] * 0.03]
            # J4 and J5 frames: elbow offset points; make the forearm go through them
            segs = [(0, 1, 0.075), (1, 2, 0.065), (2, 3, 0.06), (3, 4, 0.06), (4, 5, 0.055),
                    (5, 6, 0.055), (6, 7, 0.05), (7, 8, 0.045)]
            arr = np.array(pts)
            uv, z = cam.project(arr)
            for i, j, rad in segs:
                d = arr[j] - arr[i]
                if np.linalg.norm(d) < 1e-6:
                    continue
                prims.append((float(max(z[i], z[j])) * 0.5 + float(min(z[i], z[j])) * 0.5 + 0.01,
                              "link", (uv[i], uv[j], z[i], z[j], rad, _unit(d))))

        prims.sort(key=lambda t: -t[0])
        for _, kind, data in prims:
            if kind == "box":
                self._draw_box(img, cam, *data)
            elif kind == "bowl":
                self._draw_bowl(img, cam, data)
            elif kind == "cyl":
                self._draw_cyl(img, cam, *data)
            elif kind == "plate":
                self._draw_plate(img, cam, data)
            else:
                self._draw_link(img, cam, *data)

        if s.noise:
            pos, neg = self._noise(width, height, frame_index)
            cv2.add(img, pos, dst=img)
            cv2.subtract(img, neg, dst=img)
        return img

    def _draw_box(self, img, cam, centre, rot, half, rgb):
        corners = centre + (_CORNERS * half) @ rot.T
        uv, z = cam.project(corners)
        if z.min() < 0.02:
            return
        normals = _NORMALS @ rot.T
        # back-face test with face centres = centre + normal * half-extent along that axis
        fc = centre + normals * half[_FACE_AXIS][:, None]
        facing = np.einsum("ij,ij->i", normals, cam.eye - fc) > 0
        cols = self._shade(rgb, normals)
        ipts = np.round(uv * _SCALE).astype(np.int32)
        for k in np.flatnonzero(facing):
            c = cols[k]
            cv2.fillConvexPoly(img, ipts[_FACES[k]], (float(c[0]), float(c[1]), float(c[2])),
                               cv2.LINE_AA, _SHIFT)

    def _draw_cyl(self, img, cam, centre, rot, radius, half_h, rgb, n):
        """Upright-in-its-own-frame cylinder (n=16) or hexagonal prism (n=6), any orientation."""
        ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
        ring = np.column_stack([np.cos(ang), np.sin(ang)])
        loc = np.concatenate([np.column_stack([ring * radius, np.full(n, -half_h)]),
                              np.column_stack([ring * radius, np.full(n, half_h)])])
        pts = centre + loc @ rot.T
        uv, z = cam.project(pts)
        if z.min() < 0.02:
            return
        ipts = np.round(uv * _SCALE).astype(np.int32)
        mid = ang + np.pi / n
        side_n = np.column_stack([np.cos(mid), np.sin(mid), np.zeros(n)]) @ rot.T
        nrm = np.concatenate([side_n, rot[:, 2][None], -rot[:, 2][None]])
        cols = self._shade(rgb, nrm)
        fc = centre + side_n * radius
        facing = np.einsum("ij,ij->i", side_n, cam.eye - fc) > 0
        for k in np.flatnonzero(facing):
            k2 = (k + 1) % n
            c = cols[k]
            cv2.fillConvexPoly(img, ipts[[k, k2, n + k2, n + k]], (float(c[0]), float(c[1]), float(c[2])),
                               cv2.LINE_AA, _SHIFT)
        for cap, sl, sgn in ((n, slice(n, 2 * n), 1), (n + 1, slice(0, n), -1)):
            if float(np.dot(sgn * rot[:, 2], cam.eye - (centre + sgn * rot[:, 2] * half_h))) > 0:
                c = cols[cap]
                cv2.fillConvexPoly(img, ipts[sl], (float(c[0]), float(c[1]), float(c[2])),
                                   cv2.LINE_AA, _SHIFT)

    def _draw_plate(self, img, cam, pts):
        uv, z = cam.project(pts)
        if (z < 0.02).any():
            return
        s = self.style
        ipts = np.round(uv * _SCALE).astype(np.int32)
        rgb = np.array([232.0, 230, 220])
        k = s.brightness
        side = tuple(np.clip(rgb * k * (s.ambient + 0.35 * s.diffuse), 0, 255).tolist())
        top = tuple(np.clip(rgb * k * (s.ambient + s.diffuse * s.light_dir[2]), 0, 255).tolist())
        well = tuple(np.clip(rgb * k * (s.ambient + 0.85 * s.diffuse * s.light_dir[2]), 0, 255).tolist())
        cv2.fillConvexPoly(img, cv2.convexHull(ipts[:48]), side, cv2.LINE_AA, _SHIFT)
        cv2.fillConvexPoly(img, ipts[:24], top, cv2.LINE_AA, _SHIFT)
        cv2.fillConvexPoly(img, ipts[48:72], well, cv2.LINE_AA, _SHIFT)

    def _draw_bowl(self, img, cam, pts):
        uv, z = cam.project(pts)
        if (z < 0.02).any():
            return
        s = self.style
        ipts = np.round(uv * _SCALE).astype(np.int32)
        rgb = np.asarray(s.bowl_rgb, float)
        k = s.brightness
        outer = tuple(np.clip(rgb * k * (s.ambient + 0.6 * s.diffuse), 0, 255).tolist())
        inside = tuple(np.clip(rgb * k * (s.ambient * 0.8 + 0.25 * s.diffuse), 0, 255).tolist())
        floor = tuple(np.clip(rgb * k * (s.ambient * 0.9 + 0.6 * s.diffuse * s.light_dir[2]), 0, 255).tolist())
        lip = tuple(np.clip(rgb * k * 1.25 + 25, 0, 255).tolist())
        hull = cv2.convexHull(ipts[:48])
        cv2.fillConvexPoly(img, hull, outer, cv2.LINE_AA, _SHIFT)
        cv2.fillConvexPoly(img, ipts[:24], lip, cv2.LINE_AA, _SHIFT)
        cv2.fillConvexPoly(img, ipts[48:72], inside, cv2.LINE_AA, _SHIFT)
        cv2.fillConvexPoly(img, ipts[72:96], floor, cv2.LINE_AA, _SHIFT)

    def _draw_link(self, img, cam, a, b, za, zb, rad, d):
        if za < 0.05 or zb < 0.05:
            return
        s = self.style
        # brightest normal of a cylinder with axis d: the light's component orthogonal to d
        dl = float(d[0] * s.light_dir[0] + d[1] * s.light_dir[1] + d[2] * s.light_dir[2])
        lit = math.sqrt(max(0.0, 1.0 - dl * dl))
        k = s.brightness
        r0, g0, b0 = s.arm_rgb
        def col(m, add=0.0):
            return (min(255.0, r0 * k * m + add), min(255.0, g0 * k * m + add), min(255.0, b0 * k * m + add))
        th = max(1, int(2 * rad * cam.f / (0.5 * (za + zb))))
        pa = (int(round(a[0] * _SCALE)), int(round(a[1] * _SCALE)))
        pb = (int(round(b[0] * _SCALE)), int(round(b[1] * _SCALE)))
        cv2.line(img, pa, pb, col(s.ambient * 0.6), th + 2, cv2.LINE_AA, _SHIFT)
        cv2.line(img, pa, pb, col(s.ambient + s.diffuse * lit * 0.8), th, cv2.LINE_AA, _SHIFT)
        cv2.line(img, pa, pb, col(s.ambient + s.diffuse * lit * 1.1, 10.0), max(1, th // 3),
                 cv2.LINE_AA, _SHIFT)
