"""Procedural synthetic pedestrians for CPU demos and tests, and Market-1501 export.

A person is a set of appearance attributes drawn from small palettes (so
that many people look alike); a camera is a domain shift applied to every
image it takes. Everything is drawn with vectorised NumPy from one
``random_state``.
"""

import logging
import os
from numbers import Integral, Real

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from ._base import ReIDDataset, ReIDSplit
from ._io import check_image_size, read_image

__all__ = ["make_persons", "save_market1501"]

logger = logging.getLogger(__name__)

# --- appearance palettes (RGB) -------------------------------------------------
# Small on purpose: people share colours, as in real footage where dark
# clothes dominate. Probabilities skew towards the common ones.
_SKIN = np.array([[236, 198, 168], [212, 164, 126], [164, 112, 78], [104, 68, 48]], float)
_SKIN_P = np.array([0.35, 0.3, 0.2, 0.15])
_HAIR = np.array(
    [[24, 20, 18], [66, 42, 26], [118, 84, 52], [196, 162, 108], [150, 150, 150]], float
)
_HAIR_P = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
_CLOTH = np.array(
    [
        [30, 30, 34],  # black
        [222, 222, 216],  # white
        [124, 124, 128],  # grey
        [40, 48, 96],  # navy
        [176, 38, 44],  # red
        [66, 110, 186],  # blue
        [52, 116, 62],  # green
        [214, 184, 58],  # yellow
        [120, 80, 52],  # brown
        [198, 178, 140],  # beige
    ],
    float,
)
_CLOTH_P = np.array([0.2, 0.12, 0.14, 0.12, 0.09, 0.08, 0.07, 0.05, 0.06, 0.07])
_LOWER = np.array([0, 2, 3, 8, 9, 1])  # trousers use a sub-palette of _CLOTH
_LOWER_P = np.array([0.32, 0.18, 0.25, 0.08, 0.1, 0.07])
_DENIM = np.array([70, 92, 132], float)
_SHOES = np.array([[28, 28, 30], [220, 220, 220], [96, 62, 40]], float)
_BG = np.array(
    [[150, 150, 146], [120, 112, 100], [92, 104, 92], [170, 160, 140], [110, 120, 138],
     [140, 130, 120], [86, 86, 90], [180, 176, 168]],
    float,
)

# Layer ids of the label map each person is drawn into.
_BACK, _SKIN_L, _HAIR_L, _UP1, _UP2, _LOW, _SHOE, _BAG, _OCC = range(9)
_N_LAYERS = 9

# Attributes of an identity: discrete ones (palette indices and styles),
# then continuous body proportions.
_ATTRS = (
    "skin", "hair", "long_hair", "upper", "upper2", "pattern", "sleeve",
    "lower", "lower_type", "shoes", "bag", "bag_color", "height", "build",
)


def _draw_identities(n, rs, hard_negative_rate):
    """Attributes of ``n`` people; some are near-copies of earlier ones."""
    draw = {
        "skin": lambda: rs.choice(4, p=_SKIN_P),
        "hair": lambda: rs.choice(5, p=_HAIR_P),
        "long_hair": lambda: int(rs.rand() < 0.3),
        "upper": lambda: rs.choice(10, p=_CLOTH_P),
        "upper2": lambda: rs.choice(10, p=_CLOTH_P),
        "pattern": lambda: rs.choice(5, p=[0.45, 0.15, 0.12, 0.13, 0.15]),
        "sleeve": lambda: int(rs.rand() < 0.5),
        "lower": lambda: rs.choice(6, p=_LOWER_P),
        "lower_type": lambda: rs.choice(3, p=[0.65, 0.2, 0.15]),
        "shoes": lambda: rs.choice(3, p=[0.5, 0.3, 0.2]),
        "bag": lambda: rs.choice(3, p=[0.5, 0.3, 0.2]),
        "bag_color": lambda: rs.choice(10, p=_CLOTH_P),
    }
    people = []
    for i in range(n):
        if i > 0 and rs.rand() < hard_negative_rate:
            # A hard negative: an earlier person with one thing changed.
            person = dict(people[rs.randint(i)])
            key = rs.choice(list(draw) + ["body"])
            if key == "body":
                taller = rs.choice([-1, 1]) * 0.06
                person["height"] = float(np.clip(person["height"] + taller, 0.84, 1.0))
                wider = rs.choice([0.88, 1.14])
                person["build"] = float(np.clip(person["build"] * wider, 0.8, 1.25))
            else:
                old = person[key]
                while person[key] == old:
                    person[key] = int(draw[key]())
        else:
            person = {k: int(f()) for k, f in draw.items()}
            person["height"] = rs.uniform(0.84, 1.0)
            person["build"] = rs.uniform(0.85, 1.2)
        # A person's own shade of the shared palette colour (stable across images).
        person["tint"] = rs.normal(0, 9, size=(3, 3))
        people.append(person)
    return people


def _identity_palettes(people):
    """(n_people, n_layers, 3) colours and per-person attribute arrays."""
    n = len(people)
    pal = np.zeros((n, _N_LAYERS, 3))
    attrs = {k: np.array([p[k] for p in people]) for k in _ATTRS}
    tint = np.stack([p["tint"] for p in people])
    pal[:, _SKIN_L] = _SKIN[attrs["skin"]]
    pal[:, _HAIR_L] = _HAIR[attrs["hair"]]
    pal[:, _UP1] = _CLOTH[attrs["upper"]] + tint[:, 0]
    pal[:, _UP2] = _CLOTH[attrs["upper2"]] + tint[:, 1]
    lower = _CLOTH[_LOWER[attrs["lower"]]]
    lower[attrs["lower"] == 2] = _DENIM  # "navy" trousers are jeans
    pal[:, _LOW] = lower + tint[:, 2]
    pal[:, _SHOE] = _SHOES[attrs["shoes"]]
    pal[:, _BAG] = _CLOTH[attrs["bag_color"]] * 0.85
    return pal, attrs


def _draw_cameras(n_cameras, rs, camera_shift):
    """Per-camera domain shift: colour cast, exposure, background, viewpoint."""
    s = camera_shift
    warm = rs.uniform(-0.22, 0.22, n_cameras) * s
    cast = np.stack([warm, np.zeros(n_cameras), -warm], 1)  # warm <-> cool white balance
    gains = np.exp(cast + rs.normal(0, 0.05 * s, (n_cameras, 3)))
    bg_pick = rs.permutation(len(_BG))
    cam = np.arange(n_cameras)
    return {
        "gains": gains,
        "brightness": np.exp(rs.normal(0, 0.13 * s, n_cameras)),
        "contrast": np.clip(1 + rs.normal(0, 0.15 * s, n_cameras), 0.6, 1.3),
        "bg1": _BG[bg_pick[cam % len(_BG)]] + rs.normal(0, 12, (n_cameras, 3)),
        "bg2": _BG[bg_pick[(cam + 3) % len(_BG)]] * rs.uniform(0.6, 1.0, (n_cameras, 1)),
        "texture": (rs.permutation(4)[cam % 4] + cam // 4) % 4,
        "period": rs.uniform(0.1, 0.3, n_cameras),
        "horizon": rs.uniform(0.55, 0.78, n_cameras),
        "view": rs.permutation(3)[cam % 3],
        "blur": rs.uniform(0, 0.3 * s, n_cameras),
        "noise": rs.uniform(2, 6, n_cameras) * min(s, 1.5),
    }


def _draw_images(pidx, cams, people_attrs, cams_p, rs, occlusion_rate):
    """Per-image nuisance parameters (pose, framing, lighting, occlusion)."""
    n = len(pidx)
    view_pref = cams_p["view"][cams]
    view = np.where(rs.rand(n) < 0.65, view_pref, rs.randint(3, size=n))  # 0 front, 1 back, 2 side
    truncated = rs.rand(n) < 0.08
    scale = people_attrs["height"][pidx] * rs.uniform(0.86, 1.0, n)
    scale = np.where(truncated, scale * rs.uniform(1.12, 1.3, n), scale)
    occ_kind = np.where(rs.rand(n) < occlusion_rate, rs.randint(1, 4, size=n), 0)
    params = {
        "view": view,
        "mirror": np.where(rs.rand(n) < 0.5, -1.0, 1.0),
        "scale": scale,
        "cx": 0.5 + rs.normal(0, 0.05, n),
        "top": rs.uniform(0.0, 0.05, n) + (1 - np.minimum(scale, 1.0)) * rs.uniform(0.2, 0.8, n),
        "lean": rs.normal(0, 0.04, n),
        "stride": rs.uniform(-1, 1, n),
        "swing": rs.uniform(-1, 1, n),
        "light": rs.uniform(0.86, 1.14, n),
        "shade_dir": rs.uniform(-0.6, 0.6, n),
        "color_jitter": rs.normal(0, 4, (n, 3)),
        "bg_shift": rs.uniform(0, 1, (n, 2)),
        "bg_light": rs.uniform(0.82, 1.18, n),
        "bg_tint": rs.normal(0, 16, (n, 3)),
        "bg_amp": rs.uniform(0.15, 0.5, n),
        "blur": np.clip(rs.uniform(0, 1.0, n) + cams_p["blur"][cams], 0, 1.4),
        "noise": cams_p["noise"][cams] + rs.uniform(0, 3, n),
        "occ_kind": occ_kind,  # 0 none, 1 bottom band, 2 left block, 3 right block
        "occ_size": rs.uniform(0.18, 0.38, n),
        "occ_color": _BG[rs.randint(len(_BG), size=n)] * rs.uniform(0.4, 1.1, (n, 1)),
    }
    # float32 throughout rendering: half the memory traffic of float64.
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in params.items()}


def _render_labels(p, a, H, W):
    """Label map (n, H, W) of person layers, in body coordinates u, v."""
    n = len(p["scale"])
    f32 = np.float32
    col = lambda x: np.asarray(x, f32)[:, None, None]  # noqa: E731
    ys = (np.arange(H, dtype=f32) + 0.5)[None, :, None]
    xs = (np.arange(W, dtype=f32) + 0.5)[None, None, :]
    height = col(p["scale"]) * H  # person height in pixels
    v = (ys - col(p["top"]) * H) / height  # 0 at the top of the head, 1 at the feet
    # Bodies are drawn 15% wider than life: 128x64 crops are tight around people.
    u = (xs - col(p["cx"]) * W) / (1.15 * height) * col(p["mirror"])
    u = u - col(p["lean"]) * (v - 0.5)
    b = col(a["build"])
    view = p["view"][:, None, None]
    front, back, side = view == 0, view == 1, view == 2
    stride, swing = col(p["stride"]), col(p["swing"])

    labels = np.zeros((n, H, W), np.uint8)

    def paint(mask, layer):
        np.copyto(labels, layer, where=mask)

    # Torso half-width narrows from shoulders to waist; side views are slimmer.
    torso_w = b * (0.118 - 0.022 * (v - 0.17) / 0.36) * np.where(side, 0.68, 1.0)
    in_torso_rows = (v >= 0.17) & (v <= 0.53)
    shoulder_cut = (v < 0.21) & (np.abs(u) > torso_w - (0.21 - v) * 0.9)
    torso = in_torso_rows & (np.abs(u) <= torso_w) & ~shoulder_cut
    long_hair = col(a["long_hair"]).astype(bool) & (np.abs(u) <= 0.068) & (v >= 0.04) & (v <= 0.28)
    bag = a["bag"][:, None, None]

    # Layers from back to front.
    paint(long_hair & ~back, _HAIR_L)
    backpack_side = (
        (bag == 1) & side & (v >= 0.2) & (v <= 0.46)
        & (u <= -torso_w + 0.01) & (u >= -torso_w - 0.07 * b)
    )
    paint(backpack_side, _BAG)
    # Arms beside the torso (front/back views); swinging with the walk.
    sleeve_end = 0.18 + np.where(col(a["sleeve"]) > 0, 0.29, 0.11)
    for sgn in (-1.0, 1.0):
        centre = sgn * (torso_w + 0.024 * b) + sgn * swing * 0.12 * (v - 0.18)
        arm = ~side & (v >= 0.18) & (v <= 0.51) & (np.abs(u - centre) <= 0.024 * b)
        paint(arm, _SKIN_L)
        paint(arm & (v <= sleeve_end), _UP1)
    # Legs: apart at the feet in proportion to the stride.
    lower_type = a["lower_type"][:, None, None]
    legs = np.zeros_like(labels, dtype=bool)
    shoes = np.zeros_like(legs)
    for sgn in (-1.0, 1.0):
        spread = np.where(side, sgn * stride * 0.22, sgn * (0.045 + 0.04 * np.abs(stride)))
        centre = np.where(side, 0.0, sgn * 0.048 * b) + spread * np.clip((v - 0.53) / 0.42, 0, 1)
        dist = np.abs(u - centre)
        legs |= (v >= 0.52) & (v <= 0.94) & (dist <= 0.043 * b * (1.05 - 0.25 * (v - 0.52)))
        shoes |= (v > 0.93) & (v <= 0.985) & (dist <= 0.05 * b)
    paint(legs, _LOW)
    paint(legs & (lower_type == 1) & (v > 0.7), _SKIN_L)  # shorts
    skirt_w = b * (0.11 + 0.12 * (v - 0.5))
    skirt = (lower_type == 2) & (v >= 0.5) & (v <= 0.72) & (np.abs(u) <= skirt_w)
    paint(legs & (lower_type == 2) & (v > 0.72), _SKIN_L)
    paint(skirt, _LOW)
    paint(shoes, _SHOE)
    # Torso with its pattern (stripes and checks follow the body).
    pattern = a["pattern"][:, None, None]
    hstripe = np.floor((v - 0.17) / 0.045) % 2 == 1
    vstripe = np.floor((u + 1.0) / 0.042) % 2 == 1
    second = (
        ((pattern == 1) & hstripe)
        | ((pattern == 2) & vstripe)
        | ((pattern == 3) & (hstripe ^ vstripe))
        | ((pattern == 4) & (v > 0.36))
    )
    paint(torso, _UP1)
    paint(torso & second, _UP2)
    # Backpack: the pack from behind, straps from the front.
    paint((bag == 1) & back & (v >= 0.2) & (v <= 0.46) & (np.abs(u) <= 0.085 * b), _BAG)
    strap_rows = (v >= 0.17) & (v <= 0.4)
    straps = (bag == 1) & front & strap_rows & (np.abs(np.abs(u) - 0.062 * b) <= 0.012)
    paint(straps, _BAG)
    # Side view: one arm in front of the torso.
    arm_c = swing * 0.25 * (v - 0.18)
    side_arm = side & (v >= 0.18) & (v <= 0.51) & (np.abs(u - arm_c) <= 0.028 * b)
    paint(side_arm, _SKIN_L)
    paint(side_arm & (v <= sleeve_end), _UP1)
    # Neck, head and hair.
    paint((v >= 0.13) & (v <= 0.18) & (np.abs(u) <= 0.024), _SKIN_L)
    head_u = u - np.where(side, 0.01, 0.0)
    head = ((head_u / 0.057) ** 2 + ((v - 0.085) / 0.072) ** 2) <= 1.0
    paint(head, _SKIN_L)
    hair = head & (back | (v < 0.055) | (side & (head_u < -0.015)))
    paint(hair, _HAIR_L)
    paint(long_hair & back & ~head, _HAIR_L)
    # Handbag at the hip; which side depends on mirror and view.
    bag_u = 0.16 * np.where(back, -1.0, 1.0) * b
    paint((bag == 2) & (v >= 0.43) & (v <= 0.57) & (np.abs(u - bag_u) <= 0.045), _BAG)
    return labels, u


def _background(cam_idx, p, cams_p, H, W):
    """Camera backgrounds (n, H, W, 3): texture and colours set by the camera."""
    n = len(cam_idx)
    ys = ((np.arange(H, dtype=np.float32) + 0.5) / H)[None, :, None]
    xs = ((np.arange(W, dtype=np.float32) + 0.5) / W)[None, None, :]
    texture = cams_p["texture"][cam_idx]
    mix = np.empty((n, H, W), np.float32)
    for kind in np.unique(texture):
        sel = texture == kind
        sx = p["bg_shift"][sel, 0, None, None]
        sy = p["bg_shift"][sel, 1, None, None]
        if kind == 0:  # vertical gradient (sky / wall)
            t = np.broadcast_to(ys, (1, H, W))
        elif kind == 1:  # vertical stripes (windows, pillars)
            period = cams_p["period"][cam_idx[sel]][:, None, None].astype(np.float32)
            t = np.floor((xs + sx) / period) % 2 + np.zeros_like(ys)
        elif kind == 2:  # wall and floor with a dark skirting line
            horizon = cams_p["horizon"][cam_idx[sel]][:, None, None].astype(np.float32)
            horizon = horizon + (sy - 0.5) * 0.1
            t = (ys > horizon) * (1 - 0.5 * (np.abs(ys - horizon) < 0.015)) + np.zeros_like(xs)
        else:  # soft blotches (foliage, shadows)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * (xs * 1.3 + sx)) * np.sin(
                2 * np.pi * (ys * 1.7 + sy)
            )
        mix[sel] = t
    mix *= p["bg_amp"][:, None, None]
    bg1 = (cams_p["bg1"][cam_idx] + p["bg_tint"]).astype(np.float32)
    bg2 = (cams_p["bg2"][cam_idx] + p["bg_tint"]).astype(np.float32)
    bg = bg1[:, None, None, :] + (bg2 - bg1)[:, None, None, :] * mix[..., None]
    # Streets are mostly grey: muted backgrounds keep the person the most
    # colourful part of the image, as in real crops.
    grey = bg.mean(axis=-1, keepdims=True)
    bg = grey + 0.4 * (bg - grey)
    bg *= p["bg_light"][:, None, None, None]
    return bg


def _render(pidx, cams, pal, a, cams_p, p, H, W, gen):
    """uint8 images (n, H, W, 3) for one chunk of per-image parameters."""
    n = len(pidx)
    ia = {k: v[pidx] for k, v in a.items()}
    labels, u = _render_labels(p, ia, H, W)
    # Occluders (a bench, a car, another passer-by) hide part of the image.
    occ_kind, size = p["occ_kind"][:, None, None], p["occ_size"][:, None, None]
    ys = ((np.arange(H) + 0.5) / H)[None, :, None]
    xs = ((np.arange(W) + 0.5) / W)[None, None, :]
    occluded = ((occ_kind == 1) & (ys > 1 - size)) | ((occ_kind == 2) & (xs < size)) | (
        (occ_kind == 3) & (xs > 1 - size)
    )
    np.copyto(labels, _OCC, where=occluded)

    colours = pal[pidx] + p["color_jitter"][:, None, :]
    colours[:, _OCC] = p["occ_color"]
    colours = np.clip(colours, 0, 255).astype(np.float32)
    flat = labels.astype(np.intp) + (np.arange(n) * _N_LAYERS)[:, None, None]
    image = np.take(colours.reshape(-1, 3), flat, axis=0)  # (n, H, W, 3)
    # Soft cylindrical shading of the body, lit from a random side.
    shade = 1.0 - 1.6 * np.clip(u, -0.25, 0.25) ** 2
    shade += 0.25 * p["shade_dir"][:, None, None] * np.clip(u, -0.2, 0.2)
    person = (labels != _BACK) & (labels != _OCC)
    image *= np.where(person, shade * p["light"][:, None, None], np.float32(1.0))[..., None]
    np.copyto(image, _background(cams, p, cams_p, H, W), where=(labels == _BACK)[..., None])
    # Camera response in one affine pass: white balance and exposure (gain),
    # then contrast around the image's mean grey level.
    gain = cams_p["gains"][cams] * cams_p["brightness"][cams][:, None]  # (n, 3)
    contrast = cams_p["contrast"][cams][:, None]
    grey = (image.mean(axis=(1, 2)) * gain).mean(axis=1, keepdims=True)
    image *= (gain * contrast).astype(np.float32)[:, None, None, :]
    image += ((1 - contrast) * grey).astype(np.float32)[:, None, None, :]
    # Blur per image, grouped by level so that each group is one filter call.
    levels = np.round(p["blur"] / 0.25) * 0.25
    for level in np.unique(levels):
        if level > 0:
            sel = levels == level
            image[sel] = ndimage.gaussian_filter(
                image[sel], sigma=(0, level, level, 0), truncate=2.5
            )
    # Uniform sensor noise with the drawn standard deviation (4x cheaper than normal).
    noise = gen.random(image.shape, dtype=np.float32)
    noise -= 0.5
    noise *= (np.sqrt(12.0) * p["noise"]).astype(np.float32)[:, None, None, None]
    image += noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _as_range(value, name):
    if isinstance(value, Integral):
        low = high = int(value)
    else:
        if len(value) != 2 or not all(isinstance(x, Integral) for x in value):
            raise ValueError(f"{name} must be an int or a pair (low, high) of ints, got {value!r}.")
        low, high = int(value[0]), int(value[1])
    if not 1 <= low <= high:
        raise ValueError(f"{name} must satisfy 1 <= low <= high, got {value!r}.")
    return low, high


@validate_params(
    {
        "n_identities": [Interval(Integral, 1, None, closed="left")],
        "n_test_identities": [Interval(Integral, 0, None, closed="left")],
        "n_cameras": [Interval(Integral, 2, None, closed="left")],
        "n_images_per_camera": [Interval(Integral, 1, None, closed="left"), tuple],
        "n_query_per_camera": [Interval(Integral, 1, None, closed="left")],
        "n_gallery_per_camera": [Interval(Integral, 1, None, closed="left")],
        "n_distractors": [Interval(Integral, 0, None, closed="left")],
        "image_size": [tuple],
        "hard_negative_rate": [Interval(Real, 0, 1, closed="both")],
        "camera_shift": [Interval(Real, 0, None, closed="left")],
        "occlusion_rate": [Interval(Real, 0, 1, closed="both")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_persons(
    n_identities=80,
    n_test_identities=50,
    n_cameras=4,
    *,
    n_images_per_camera=(5, 8),
    n_query_per_camera=1,
    n_gallery_per_camera=2,
    n_distractors=0,
    image_size=(128, 64),
    hard_negative_rate=0.4,
    camera_shift=1.0,
    occlusion_rate=0.15,
    random_state=None,
):
    """Generate a synthetic person re-id dataset with camera domain shifts.

    Each identity is a combination of appearance attributes drawn from
    small palettes: skin and hair tone, hair length, upper clothing colour
    and pattern (plain, horizontal or vertical stripes, checks, two-tone),
    sleeve length, trousers/shorts/skirt and their colour, shoes, a bag
    (none, backpack, handbag) and body proportions. Many people share most
    attributes, and a fraction are copies of an earlier person with one
    attribute changed (hard negatives). Each camera applies its own domain
    shift to every image: colour cast, exposure and contrast, background
    colours and texture, a preferred viewpoint (front, back or side),
    sensor noise and a small blur bias. Each image adds pose (stride, arm
    swing, lean), scale and position jitter, mirroring, a random blur
    level, partial (truncated) views and occlusions.

    The result follows the standard re-id protocol: train and test
    identities are disjoint; every test identity has
    ``n_query_per_camera`` query and ``n_gallery_per_camera`` gallery
    images in every camera, so each query has true matches in the gallery
    from other cameras (same-camera matches also exist, as in the public
    benchmarks; the evaluation protocol ignores them).

    Parameters
    ----------
    n_identities : int, default=80
        Number of training identities (pids ``1..n_identities``).
    n_test_identities : int, default=50
        Number of test identities (pids following the training ones);
        0 gives empty query and gallery splits.
    n_cameras : int, default=4
        Number of cameras (camids ``0..n_cameras-1``); at least 2.
    n_images_per_camera : int or tuple (low, high), default=(5, 8)
        Training images of each identity in each camera, drawn uniformly
        in ``[low, high]`` per identity and camera.
    n_query_per_camera : int, default=1
        Query images of each test identity in each camera.
    n_gallery_per_camera : int, default=2
        Gallery images of each test identity in each camera.
    n_distractors : int, default=0
        Extra gallery images of people in no other split, with pid ``0``
        (the distractor convention of Market-1501).
    image_size : tuple (height, width), default=(128, 64)
        Size of the images; at least (16, 8).
    hard_negative_rate : float, default=0.4
        Probability that a new identity copies an earlier one (of the same
        split) with a single attribute changed.
    camera_shift : float, default=1.0
        Strength of the per-camera domain shift (colour cast, exposure,
        contrast, blur bias, noise); 0 leaves backgrounds and viewpoint
        preferences as the only camera cues.
    occlusion_rate : float, default=0.15
        Fraction of images with an occluder (a band at the bottom or a
        block at one side).
    random_state : int, RandomState instance or None, default=None
        Seed; the same seed gives the same dataset.

    Returns
    -------
    dataset : ReIDDataset
        Splits holding uint8 arrays of shape (n, height, width, 3), in
        order of pid, then camera. With the defaults: about 2,080 train
        images (80 identities x 4 cameras x 5-8), 200 queries and 400
        gallery images (50 identities).

    See Also
    --------
    save_market1501 : Write the dataset to disk in the Market-1501 layout.

    Notes
    -----
    Generation is vectorised: the default dataset (about 2,700 images at
    128x64) takes a few seconds on one CPU core. Blur is drawn per image
    (with only a small per-camera bias) because a strong blur on some
    cameras and none on others makes features group by camera.

    Examples
    --------
    >>> from ucal.datasets import make_persons
    >>> data = make_persons(n_identities=10, n_test_identities=5, random_state=0)
    >>> data.train.images.shape[1:], data.train.images.dtype
    ((128, 64, 3), dtype('uint8'))
    >>> data.train.n_identities, data.query.n_identities, len(data.query), len(data.gallery)
    (10, 5, 20, 40)
    >>> bool(set(data.train.pids) & set(data.query.pids))
    False
    """
    H, W = check_image_size(image_size, name="image_size", minimum=(16, 8))
    low, high = _as_range(n_images_per_camera, "n_images_per_camera")
    rs = check_random_state(random_state)

    cams_p = _draw_cameras(n_cameras, rs, camera_shift)
    # Train and test people are drawn separately so that hard negatives
    # stay within a split (a test person is no near-copy of a train one).
    people = (
        _draw_identities(n_identities, rs, hard_negative_rate)
        + _draw_identities(n_test_identities, rs, hard_negative_rate)
        + _draw_identities(n_distractors, rs, 0.0)
    )
    pal, attrs = _identity_palettes(people) if people else (None, None)

    # Image list: (split, person index, pid, camera), ordered by pid then camera.
    split_of, pidx, pids, cams = [], [], [], []

    def add(split, person, pid, cam, count):
        split_of.extend([split] * count)
        pidx.extend([person] * count)
        pids.extend([pid] * count)
        cams.extend([cam] * count)

    counts = rs.randint(low, high + 1, size=(n_identities, n_cameras))
    for i in range(n_identities):
        for c in range(n_cameras):
            add(0, i, i + 1, c, counts[i, c])
    for k in range(n_distractors):  # pid 0 sorts first in Market file names
        add(2, n_identities + n_test_identities + k, 0, rs.randint(n_cameras), 1)
    for j in range(n_test_identities):
        pid = n_identities + j + 1
        for c in range(n_cameras):
            add(1, n_identities + j, pid, c, n_query_per_camera)
        for c in range(n_cameras):
            add(2, n_identities + j, pid, c, n_gallery_per_camera)
    split_of, pidx, pids, cams = (np.array(x, dtype=np.int64) for x in (split_of, pidx, pids, cams))

    params = _draw_images(pidx, cams, attrs, cams_p, rs, occlusion_rate)
    gen = np.random.default_rng(rs.randint(2**31))  # fast float32 noise
    images = np.empty((len(pidx), H, W, 3), dtype=np.uint8)
    chunk = 128
    for start in range(0, len(pidx), chunk):
        sl = slice(start, start + chunk)
        images[sl] = _render(
            pidx[sl], cams[sl], pal, attrs, cams_p, {k: v[sl] for k, v in params.items()}, H, W, gen
        )
    splits = [
        ReIDSplit(images[split_of == s], pids[split_of == s], cams[split_of == s], name=name)
        for s, name in enumerate(("train", "query", "gallery"))
    ]
    logger.debug("Generated %d synthetic person images of size %dx%d.", len(pidx), H, W)
    return ReIDDataset(*splits, name="persons")


@validate_params(
    {
        "dataset": [ReIDDataset],
        "root": [str, os.PathLike],
        "image_format": [StrOptions({"jpg", "png"})],
        "quality": [Interval(Integral, 1, 100, closed="both")],
        "overwrite": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def save_market1501(dataset, root, *, image_format="jpg", quality=95, overwrite=False):
    """Write a dataset to disk in the Market-1501 folder layout.

    The files go to ``root/Market-1501-v15.09.15/`` in
    ``bounding_box_train`` (train), ``query`` and ``bounding_box_test``
    (gallery), named ``PPPP_cCs1_FFFFFF_00.<ext>``: the zero-padded pid
    (``-1`` and ``0`` written as in Market-1501), the camera counted from
    ``c1`` and a running frame number that keeps names unique. Reading it
    back with :func:`load_market1501` gives the same pids, cameras and
    counts, in the order of the file names (which is the dataset's order
    when it is sorted by pid, then camera, as :func:`make_persons` is).

    Parameters
    ----------
    dataset : ReIDDataset
        The dataset; its images are arrays or file paths (read with
        :func:`read_image`, so this also converts a folder dataset).
    root : str or path-like
        Folder in which ``Market-1501-v15.09.15`` is created.
    image_format : {"jpg", "png"}, default="jpg"
        ``"jpg"`` writes JPEG like the real dataset: lossy, the pixels of
        :func:`make_persons` images come back about 3 intensity levels
        off on average at quality 95 (their sensor noise is the costly
        part). ``"png"`` is lossless, so the pixels come back exactly (the
        loaders accept ``.png``).
    quality : int, default=95
        JPEG quality (1-100); ignored for PNG.
    overwrite : bool, default=False
        If the three folders already hold image files, raise
        :class:`FileExistsError` (False) or delete those image files first
        (True; nothing else is touched).

    Returns
    -------
    path : str
        The ``Market-1501-v15.09.15`` folder written.

    Raises
    ------
    ValueError
        If an image has an unknown camera (``-1``): Market-1501 names
        need one.
    FileExistsError
        If the folders already hold images and ``overwrite`` is False.

    See Also
    --------
    load_market1501 : Read the layout back.

    Notes
    -----
    Market-1501 has cameras ``c1`` to ``c6``; a camera beyond the ninth is
    written ``c10``, ``c11``, ... which ucal reads back but tools that expect
    a single digit may not.

    Examples
    --------
    >>> import tempfile
    >>> from ucal.datasets import load_market1501, make_persons, save_market1501
    >>> data = make_persons(n_identities=3, n_test_identities=2, random_state=0)
    >>> path = save_market1501(data, tempfile.mkdtemp(), image_format="png")
    >>> back = load_market1501(path)
    >>> bool((back.train.pids == data.train.pids).all()), len(back.gallery) == len(data.gallery)
    (True, True)
    """
    from ._io import _is_image_file

    out = os.path.join(os.path.expanduser(os.fspath(root)), "Market-1501-v15.09.15")
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    for split_name in folders:
        split = getattr(dataset, split_name)
        if split.camids.size and split.camids.min() < 0:
            bad = int(np.flatnonzero(split.camids < 0)[0])
            raise ValueError(
                f"{split_name} image {bad} has an unknown camera (-1): Market-1501 file "
                "names need a camera; set camids first."
            )
    existing = []
    for sub in folders.values():
        folder = os.path.join(out, sub)
        if os.path.isdir(folder):
            existing += [os.path.join(folder, f) for f in os.listdir(folder) if _is_image_file(f)]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out!r} already holds {len(existing)} image file(s); pass overwrite=True "
            "to replace them or choose another root."
        )
    for path in existing:
        os.remove(path)
    for split_name, sub in folders.items():
        split = getattr(dataset, split_name)
        folder = os.path.join(out, sub)
        os.makedirs(folder, exist_ok=True)
        for frame, (image, pid, camid) in enumerate(split):
            if not split.in_memory:
                image = read_image(image)
            pid_text = f"{pid:04d}" if pid >= 0 else str(pid)
            name = f"{pid_text}_c{camid + 1}s1_{frame:06d}_00.{image_format}"
            path = os.path.join(folder, name)
            if image_format == "jpg":
                # Full-resolution chroma: 4:2:0 would smear thin stripes.
                Image.fromarray(image).save(
                    path, format="JPEG", quality=int(quality), subsampling=0
                )
            else:
                Image.fromarray(image).save(path, format="PNG", compress_level=1)
    logger.info("Wrote %s in the Market-1501 layout.", out)
    return out
