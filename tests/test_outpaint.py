"""Pad Image for Outpainting: size, grey border, and ComfyUI's feathered mask."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nodes.image import pad_for_outpaint  # noqa: E402


def reference_feather(h, w, left, top, right, bottom, feathering):
    """ImagePadForOutpaint's mask over the image, pixel by pixel as ComfyUI writes it."""
    t = torch.zeros((h, w))
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        for i in range(h):
            for j in range(w):
                dt = i if top != 0 else h
                db = h - i if bottom != 0 else h
                dl = j if left != 0 else w
                dr = w - j if right != 0 else w
                d = min(dt, db, dl, dr)
                if d >= feathering:
                    continue
                v = (feathering - d) / feathering
                t[i, j] = v * v
    return t


def image(b=2, h=20, w=30):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(0))


def test_pads_with_grey_and_keeps_the_image():
    img = image()
    out, mask = pad_for_outpaint.execute(None, img, 8, 16, 24, 0, 0)
    assert out.shape == (2, 20 + 16, 30 + 8 + 24, 3)
    assert torch.equal(out[:, 16:36, 8:38], img)
    assert torch.all(out[:, :16] == 0.5) and torch.all(out[:, :, :8] == 0.5)
    assert torch.all(out[:, :, 38:] == 0.5)
    assert mask.shape == (1, 36, 62)
    # No feathering: 1 exactly on the new border, 0 on the image.
    assert torch.all(mask[0, :16] == 1) and torch.all(mask[0, :, :8] == 1)
    assert torch.all(mask[0, :, 38:] == 1)
    assert not mask[0, 16:, 8:38].any()


@pytest.mark.parametrize(
    "pads",
    [(8, 0, 0, 0), (0, 8, 8, 0), (8, 8, 8, 8), (0, 0, 0, 16), (0, 0, 0, 0)],
)
def test_feathered_mask_is_comfyuis(pads):
    left, top, right, bottom = pads
    img = image(1, 24, 32)
    _, mask = pad_for_outpaint.execute(None, img, left, top, right, bottom, 5)
    inner = mask[0, top : top + 24, left : left + 32]
    assert torch.equal(inner, reference_feather(24, 32, left, top, right, bottom, 5))
    if left:
        # Fading into the image from the padded side: 1 at the edge, then (5 - d) / 5 squared.
        assert inner[12, :6].tolist() == pytest.approx([1.0, 0.64, 0.36, 0.16, 0.04, 0.0])
    # The sides not padded never feather.
    if not top and not bottom:
        assert torch.equal(inner[0, 10:20], inner[12, 10:20])


def test_feathering_wider_than_half_the_image_gives_a_hard_edge():
    _, mask = pad_for_outpaint.execute(None, image(1, 20, 30), 8, 0, 0, 0, 10)
    assert not mask[0, :, 8:].any() and torch.all(mask[0, :, :8] == 1)
