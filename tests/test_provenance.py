"""Provenance of saved images: C2PA manifests, the watermark, ``studio verify``.

Images come from studio-tiny (64x64, 2 steps) and from Scale Image (a 64x64 source
made 512x512: the size at which the watermark is meant to be read, see the README).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from studio.cli import main as studio
from studio.modelfiles import EMBEDDED_MODELS
from studio.provenance import COMPOSITE, TRAINED, Recipe, encode_image
from studio.provenance import watermark as wm
from studio.provenance.certs import SigningError, local_credentials, user_credentials
from studio.provenance.reading import verify

torch = pytest.importorskip("torch")

TINY = "studio-tiny.safetensors"


# -- PNG chunk surgery --------------------------------------------------------------------


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, i = [], 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        out.append((data[i + 4 : i + 8], data[i + 8 : i + 8 + n]))
        i += 12 + n
    return out


def png_of(parts: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(
        struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in parts
    )
    return b"\x89PNG\r\n\x1a\n" + body


def with_pixels(data: bytes, pixels: np.ndarray) -> bytes:
    """The PNG ``data`` with its image data replaced by ``pixels`` (every chunk else kept)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=4)  # as Save Image
    idat = [c for c in chunks(buf.getvalue()) if c[0] == b"IDAT"]
    old = chunks(data)
    first = next(i for i, c in enumerate(old) if c[0] == b"IDAT")
    rest = [c for c in old[first:] if c[0] != b"IDAT"]
    return png_of(old[:first] + idat + rest)


# -- runs ---------------------------------------------------------------------------------


def make_engine(tmp: Path, **settings):
    from studio.engine import Engine
    from studio.library import installed_registry
    from studio.settings import Settings

    s = Settings(output_dir=str(tmp / "out"), input_dir=str(tmp / "in"), **settings)
    return Engine(installed_registry(), settings=s)


def generate(engine, prompt="a red circle on a blue background, left") -> Path:
    from studio import recipes

    wf, _ = recipes.txt2img(engine.registry, TINY, prompt, seed=3, steps=2, output="save_image")
    result = engine.run(wf)
    assert result.ok, result.errors
    return Path(result.images[0].info["studio_path"])


def scale_up(engine, source: Path, fmt="png", factor=8.0) -> Path:
    """Load Image -> Scale Image (x factor) -> Save Image: an edit of ``source``."""
    from studio.graph.workflow import Workflow

    wf = Workflow(engine.registry)
    load = wf.add_node("load_image", {"image": str(source)})
    scale = wf.add_node("scale_image", {"factor": factor, "method": "lanczos"})
    save = wf.add_node("save_image", {"format": fmt, "filename_prefix": "up"})
    wf.connect(load.id, "image", scale.id, "image")
    wf.connect(scale.id, "image", save.id, "images")
    result = engine.run(wf)
    assert result.ok, result.errors
    return Path(result.images[0].info["studio_path"])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A generated 64x64 PNG and 512x512 edits of it (PNG and JPEG), with every default."""
    tmp = tmp_path_factory.mktemp("provenance")
    engine = make_engine(tmp)
    gen = generate(engine)
    return SimpleNamespace(
        tmp=tmp,
        engine=engine,
        gen=gen,
        up_png=scale_up(engine, gen, "png"),
        up_jpeg=scale_up(engine, gen, "jpeg"),
    )


def run_verify(capsys, *args) -> tuple[int, str]:
    code = studio(["verify", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out + out.err


# -- what a saved image carries -----------------------------------------------------------


def test_a_generated_image_carries_a_valid_manifest_with_its_action_and_models(made, capsys):
    report = verify(made.gen)
    assert report.valid and report.status == "signed"
    # A local certificate: valid, but no reader trusts its signer.
    assert report.failures == ["signingCredential.untrusted"] and report.local_signer
    assert report.actions == [{"action": "c2pa.created", "digitalSourceType": TRAINED}]
    expected = hashlib.sha256((EMBEDDED_MODELS / "checkpoints" / TINY).read_bytes()).hexdigest()
    assert report.models == [{"kind": "checkpoints", "name": TINY, "sha256": expected}]
    assert report.software.startswith("Studio ")
    data = made.gen.read_bytes()
    assert str(EMBEDDED_MODELS).encode() not in data  # names, never the user's paths
    with Image.open(made.gen) as im:  # the workflow and the parameters stay
        assert {"studio_workflow", "parameters"} <= set(im.text)
    assert report.watermark is not None and not report.watermark.checked  # 64x64: too small
    code, text = run_verify(capsys, made.gen)
    assert code == 0
    assert "valid C2PA manifest (untrusted signer)" in text and "c2pa.created" in text


def test_an_edit_lists_its_source_as_an_ingredient_with_its_manifest(made):
    for path in (made.up_png, made.up_jpeg):
        report = verify(path)
        assert report.valid, report.failures
        assert [a["action"] for a in report.actions] == ["c2pa.opened", "c2pa.edited"]
        assert report.actions[1]["digitalSourceType"] == COMPOSITE
        assert report.ingredients == [
            {"title": made.gen.name, "relationship": "parentOf", "manifest": True}
        ]
        assert report.size == (512, 512) and report.watermark.found
    assert made.up_jpeg.suffix == ".jpg" and made.up_jpeg.read_bytes()[:3] == b"\xff\xd8\xff"


def test_one_changed_pixel_reads_as_tampered(made, capsys, tmp_path):
    data = made.up_png.read_bytes()
    pixels = np.asarray(Image.open(made.up_png).convert("RGB")).copy()
    pixels[100, 200, 0] ^= 1
    changed = tmp_path / "changed.png"
    changed.write_bytes(with_pixels(data, pixels))
    report = verify(changed)
    assert report.status == "tampered" and "assertion.dataHash.mismatch" in report.failures
    code, text = run_verify(capsys, changed)
    assert code == 1 and "tampered: changed after it was signed" in text
    # The same surgery without the change keeps it valid: the test tells the two apart.
    same = tmp_path / "same.png"
    same.write_bytes(with_pixels(data, np.asarray(Image.open(made.up_png).convert("RGB"))))
    assert verify(same).status == "signed"


def test_stripped_chunks_leave_no_manifest_but_the_watermark(made, capsys, tmp_path):
    kept = [c for c in chunks(made.up_png.read_bytes()) if c[0] in (b"IHDR", b"IDAT", b"IEND")]
    stripped = tmp_path / "stripped.png"
    stripped.write_bytes(png_of(kept))
    report = verify(stripped)
    assert not report.manifest and report.status == "watermarked"
    code, text = run_verify(capsys, stripped)
    assert code == 1
    assert "no C2PA manifest; Studio's watermark found" in text


def test_the_watermark_survives_jpeg_75_and_half_size(made):
    marked = Image.open(made.up_png).convert("RGB")
    buf = io.BytesIO()
    marked.save(buf, format="JPEG", quality=75)
    jpeg = Image.open(buf).convert("RGB")
    half = marked.resize((256, 256), Image.Resampling.LANCZOS)
    assert wm.pil_detect(jpeg).found
    assert wm.pil_detect(half).found
    # The same image unmarked: nothing is found in it.
    plain = Image.open(made.gen).convert("RGB").resize((512, 512), Image.Resampling.LANCZOS)
    assert not wm.pil_detect(plain).found


def test_the_watermark_reads_as_invisible_watermark_writes_and_reads_it():
    imwatermark = pytest.importorskip("imwatermark")
    rng = np.random.default_rng(1)
    rgb = np.asarray(
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).resize(
            (256, 256), Image.Resampling.BICUBIC
        )
    )
    ours = wm.embed(rgb)
    mse = np.mean((ours.astype(float) - rgb) ** 2)
    assert 10 * np.log10(255**2 / mse) > 38  # PSNR: not to be seen
    decoded = imwatermark.WatermarkDecoder("bytes", 48).decode(ours[..., ::-1].copy(), "dwtDctSvd")
    assert decoded == wm.PAYLOAD
    enc = imwatermark.WatermarkEncoder()
    enc.set_watermark("bytes", wm.PAYLOAD)
    theirs = enc.encode(rgb[..., ::-1].copy(), "dwtDctSvd")[..., ::-1]
    assert wm.detect(np.ascontiguousarray(theirs)).found
    assert not wm.detect(rgb).found


# -- settings -----------------------------------------------------------------------------


def test_turning_the_features_off_leaves_nothing(made, tmp_path):
    for mode in ("manifest", "nothing"):
        engine = make_engine(tmp_path / mode, image_metadata=mode, watermark=False)
        path = scale_up(engine, made.gen)
        kinds = {t for t, _ in chunks(path.read_bytes())}
        report = verify(path)
        assert not report.watermark.found
        if mode == "nothing":
            assert not report.manifest and report.status == "none"
            assert kinds == {b"IHDR", b"IDAT", b"IEND"}  # no text chunks either
        else:
            assert report.valid and b"caBX" in kinds
            assert not kinds & {b"tEXt", b"iTXt", b"zTXt"}
    # The prompts are in the workflow text, and that is gone from a "manifest" image.
    engine = make_engine(tmp_path / "private", image_metadata="manifest")
    private = generate(engine, prompt="my secret prompt")
    assert b"secret" not in private.read_bytes() and verify(private).valid


def test_the_artists_own_certificate_signs_and_bad_ones_are_named(tmp_path):
    from studio.provenance.certs import make_local_credentials

    bundle, _, key = make_local_credentials()
    cert = tmp_path / "chain.pem"
    cert.write_bytes(bundle.replace(key, b""))
    keyfile = tmp_path / "key.pem"
    keyfile.write_bytes(key)
    creds = user_credentials(str(cert), str(keyfile))
    im = Image.new("RGB", (64, 64), "red")
    settings = SimpleNamespace(image_metadata="everything", watermark=True)
    data = encode_image(im, "webp", settings=settings, recipe=Recipe(), creds=creds)
    report = verify(tmp_path / "x.webp", data=data)
    assert report.valid and not creds.local
    other = tmp_path / "other.pem"
    other.write_bytes(make_local_credentials()[2])
    with pytest.raises(SigningError, match="does not belong"):
        user_credentials(str(cert), str(other))
    with pytest.raises(SigningError, match="not a PEM certificate"):
        user_credentials(str(keyfile), str(keyfile))
    with pytest.raises(SigningError, match=r"missing\.pem"):
        user_credentials(str(tmp_path / "missing.pem"), str(keyfile))


def test_the_local_certificate_is_made_once_with_what_c2pa_requires(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    first = local_credentials(tmp_path)
    again = local_credentials(tmp_path)
    assert first == again and (tmp_path / "signer.pem").stat().st_mode & 0o777 == 0o600
    ee, ca = x509.load_pem_x509_certificates(first.chain_pem)
    assert ee.issuer == ca.subject != ee.subject
    assert ee.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    eku = ee.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in eku
    assert not ee.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ee.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    ee.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ee.verify_directly_issued_by(ca)


# -- studio verify on bad input -----------------------------------------------------------


def test_verify_says_clearly_what_is_wrong_with_bad_input(made, capsys, tmp_path):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    code, text = run_verify(capsys, text_file)
    assert code == 2 and "not an image" in text and "Traceback" not in text

    data = made.up_png.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    code, text = run_verify(capsys, truncated)
    assert code == 2 and "cut short" in text

    parts = chunks(data)
    broken = [(t, d[:40] + b"\0" * (len(d) - 40) if t == b"caBX" else d) for t, d in parts]
    malformed = tmp_path / "malformed.png"
    malformed.write_bytes(png_of(broken))
    code, text = run_verify(capsys, malformed)
    assert code == 1 and "manifest" in text and "Traceback" not in text
    assert verify(malformed).status in ("invalid", "tampered")

    code, text = run_verify(capsys, tmp_path / "missing.png")
    assert code == 2 and "not found" in text

    # Several at once, as JSON: the worst exit code wins.
    code, text = run_verify(capsys, "--json", made.gen, text_file)
    rows = json.loads(text)
    assert code == 2 and [r["status"] for r in rows] == ["signed", "unreadable"]


def test_studio_run_out_signs_the_images_it_writes(made, capsys, tmp_path):
    from studio.graph.fileformat import save_workflow
    from studio.graph.workflow import Workflow

    wf = Workflow(made.engine.registry)
    load = wf.add_node("load_image", {"image": str(made.gen)})
    scale = wf.add_node("scale_image", {"factor": 4.0})
    preview = wf.add_node("preview_image")
    wf.connect(load.id, "image", scale.id, "image")
    wf.connect(scale.id, "image", preview.id, "images")
    path = tmp_path / "upscale.json"
    save_workflow(wf, path)
    assert studio(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    (written,) = capsys.readouterr().out.split()
    report = verify(written)
    assert report.valid and report.ingredients[0]["title"] == made.gen.name
    assert report.watermark.found
    with Image.open(written) as im:
        assert "studio_workflow" in im.text


def test_grey_and_small_images_are_left_unmarked_and_alpha_is_kept():
    grey = Image.effect_noise((300, 300), 40)  # mode L: a mark in the colour would tint it
    assert wm.pil_embed(grey) is grey
    small = Image.new("RGB", (200, 200), "teal")
    assert wm.pil_embed(small) is small and not wm.pil_detect(small).found
    # Under 128x128 not even a halved copy (read at twice its size) can carry the mark.
    assert not wm.pil_detect(Image.new("RGB", (100, 100))).checked
    rgba = Image.merge("RGBA", [grey, grey, grey, grey.point(lambda v: 255 - v)])
    marked = wm.pil_embed(rgba)
    assert marked.mode == "RGBA" and marked.getchannel("A") == rgba.getchannel("A")
    assert wm.pil_detect(marked).found


def test_an_image_is_saved_even_where_c2pa_is_missing(monkeypatch, caplog):
    # Found on the GPU machine: without c2pa-python every Save Image failed. Never lose an
    # image over its provenance: it is saved, marked, unsigned, and the log says why.
    import builtins
    import sys

    real_import = builtins.__import__

    def no_c2pa(name, *args, **kwargs):
        if name == "c2pa" or name.startswith("c2pa."):
            raise ImportError("No module named 'c2pa'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "c2pa", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_c2pa)
    pixels = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    settings = SimpleNamespace(image_metadata="everything", watermark=True)
    data = encode_image(Image.fromarray(pixels), "png", settings=settings, recipe=Recipe())
    monkeypatch.setattr(builtins, "__import__", real_import)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (256, 256)
    assert "without a C2PA manifest" in caplog.text
