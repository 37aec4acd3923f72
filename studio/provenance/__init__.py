"""Provenance of saved images: how an image was made, signed (C2PA) and watermarked.

What a saved image carries depends on the settings (``studio.settings.Settings``):

- ``image_metadata``: "everything" (the workflow and A1111 ``parameters`` text, and a
  signed C2PA manifest), "manifest" (the manifest without the workflow or the prompts,
  for images whose prompts are private), or "nothing".
- ``watermark``: the invisible mark of :mod:`studio.provenance.watermark` (on by default).
- ``signing_cert`` / ``signing_key``: the artist's own certificate instead of the local
  one (:mod:`studio.provenance.certs`).

The manifest (c2pa-python) says ``c2pa.created`` with digitalSourceType
``trainedAlgorithmicMedia`` for a generated image, or ``c2pa.opened`` + ``c2pa.edited``
with the source image as its ingredient (its own manifest kept) when a Load Image fed
the saved image (img2img, inpaint, upscale); the models by file name and content hash
(never a path of the user's disk); and Studio's name and version. Nothing here touches
the network: no timestamp authority, no trust list, no remote manifest, no OCSP.

No Qt here: the nodes, the CLI and the app call it alike.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.provenance.certs import Credentials, SigningError, credentials

log = logging.getLogger("studio")

MODES = ("everything", "manifest", "nothing")
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = IPTC + "trainedAlgorithmicMedia"
COMPOSITE = IPTC + "compositeWithTrainedAlgorithmicMedia"
#: Save Image's formats, by the name the node shows.
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
SUFFIX = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
MODELS_LABEL = "studio.models"
#: The file kinds whose files are models (the rest, image and mask, are not).
NOT_MODELS = ("image", "mask")

__all__ = [
    "MIME",
    "MODES",
    "SUFFIX",
    "Credentials",
    "ModelRef",
    "Recipe",
    "SigningError",
    "credentials",
    "encode_image",
    "metadata_mode",
    "recipe_of",
]


@dataclass(frozen=True)
class ModelRef:
    kind: str  # the models-root folder: checkpoints, loras, ...
    name: str  # the file name only
    sha256: str  # of the content ("" when it could not be read)


@dataclass(frozen=True)
class Recipe:
    """What a manifest says about how an image was made."""

    models: tuple[ModelRef, ...] = ()
    sources: tuple[Path, ...] = ()  # images it was made from (Load Image)


def metadata_mode(settings: Any) -> str:
    mode = getattr(settings, "image_metadata", "everything")
    if mode not in MODES:
        log.warning("image_metadata %r is not one of %s: using 'everything'", mode, MODES)
        return "everything"
    return mode


def _upstream_nodes(wf: Any, start: str) -> list[Any]:
    seen, queue, found = {start}, deque([start]), []
    while queue:
        for lk in wf.links_into(queue.popleft()):
            if lk.source not in seen:
                seen.add(lk.source)
                found.append(wf.get_node(lk.source))
                queue.append(lk.source)
    return found


def _sha256(files: Any, path: Path) -> str:
    try:
        digest = files.of(path)
    except Exception:
        return ""
    return "" if digest.startswith("missing:") else digest.rsplit(":", 1)[-1]


def recipe_of(wf: Any, node_id: str, model_files: Any, files: Any) -> Recipe:
    """The models and source images feeding ``node_id`` in ``wf``.

    ``files`` is a :class:`studio.engine.fingerprint.FileFingerprinter`: the engine's own
    (which has hashed these files for the run already) where there is one."""
    if wf is None:
        return Recipe()
    models, sources = [], []
    for n in _upstream_nodes(wf, node_id):
        spec = wf.spec_of(n)
        if spec is None:
            continue
        for inp in spec.inputs:
            value = n.params.get(inp.name)
            if not inp.file_kind or not isinstance(value, str) or not value:
                continue
            if inp.file_kind == "image":
                source = _source_path(value, model_files)
                if source is not None:
                    sources.append(source)
            elif inp.file_kind not in NOT_MODELS:
                path = None
                try:
                    path = model_files.resolve(inp.file_kind, value) if model_files else None
                except Exception:
                    path = None
                name = Path(value.replace("\\", "/")).name
                digest = _sha256(files, Path(path)) if path is not None and files else ""
                models.append(ModelRef(inp.file_kind, name, digest))
    return Recipe(tuple(dict.fromkeys(models)), tuple(dict.fromkeys(sources)))


def _source_path(name: str, model_files: Any) -> Path | None:
    from nodes.image import split_annotation

    name, annotation = split_annotation(name)
    p = Path(name).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    settings = getattr(model_files, "settings", None)
    folder = getattr(settings, "output_path" if annotation == "output" else "input_path", None)
    from studio.modelfiles import RESOURCES

    # Where Load Image looks (nodes.image.resolve_image_path), never out of those folders.
    bases = [Path(folder)] if folder else []
    for base in bases + ([RESOURCES / "images"] if annotation is None else []):
        candidate = base / p
        if candidate.resolve().is_relative_to(base.resolve()) and candidate.is_file():
            return candidate
    return None


# -- writing -----------------------------------------------------------------------------


def _exif_user_comment(text: str) -> Any:
    """An EXIF block with A1111's ``parameters`` text as UserComment (as A1111 writes it)."""
    from PIL import Image

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
    return exif


def encode_image(
    im: Any,
    fmt: str,
    *,
    settings: Any,
    recipe: Recipe,
    texts: dict[str, str] | None = None,
    quality: int = 95,
    title: str = "",
    creds: Credentials | None = None,
) -> bytes:
    """``im`` (PIL) as the bytes of a ``fmt`` file ("png", "jpeg", "webp"), marked, with
    the text chunks and the signed manifest the settings ask for.

    A manifest that cannot be signed (an unusable certificate) never loses the image:
    it is saved unsigned and a warning is logged."""
    from studio.provenance import watermark

    if fmt not in MIME:
        raise ValueError(f"unknown image format {fmt!r}; one of {', '.join(MIME)}")
    mode = metadata_mode(settings)
    if getattr(settings, "watermark", True):
        im = watermark.pil_embed(im)
    texts = dict(texts or {}) if mode == "everything" else {}
    buf = io.BytesIO()
    if fmt == "png":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in texts.items():
            if value:
                info.add_text(key, value)
        im.save(buf, format="PNG", pnginfo=info, compress_level=4)
    else:
        kwargs: dict[str, Any] = {"quality": quality}
        if texts.get("parameters"):
            kwargs["exif"] = _exif_user_comment(texts["parameters"])
        if fmt == "jpeg":
            im = im.convert("RGB")
        im.save(buf, format=fmt.upper(), **kwargs)
    data = buf.getvalue()
    if mode == "nothing":
        return data
    try:
        return sign(data, MIME[fmt], recipe, settings=settings, title=title, creds=creds)
    except (SigningError, ImportError) as exc:  # ImportError: c2pa-python is not installed
        log.warning("the image is saved without a C2PA manifest: %s", exc)
        return data


def manifest_definition(recipe: Recipe, title: str, mime: str) -> dict[str, Any]:
    from studio import __version__

    agent = {"name": "Studio", "version": __version__}
    if recipe.sources:
        ids = [f"source-{i}" for i in range(len(recipe.sources))]
        actions = [
            {"action": "c2pa.opened", "parameters": {"ingredientIds": ids[:1]}},
            {"action": "c2pa.edited", "digitalSourceType": COMPOSITE, "softwareAgent": agent},
        ]
    else:
        actions = [{"action": "c2pa.created", "digitalSourceType": TRAINED, "softwareAgent": agent}]
    assertions: list[dict[str, Any]] = [{"label": "c2pa.actions", "data": {"actions": actions}}]
    if recipe.models:
        assertions.append(
            {
                "label": MODELS_LABEL,
                "data": {
                    "models": [
                        {"kind": m.kind, "name": m.name, "sha256": m.sha256} for m in recipe.models
                    ]
                },
            }
        )
    return {
        "claim_generator_info": [agent],
        "title": title or "image",
        "format": mime,
        "assertions": assertions,
    }


_lock = threading.Lock()
_context: Any = None
_signers: dict[tuple[bytes, bytes], Any] = {}


def c2pa_context() -> Any:
    """c2pa-python's settings for Studio: nothing is fetched, no thumbnail is made."""
    global _context
    import c2pa

    with _lock:
        if _context is None:
            _context = c2pa.Context.from_dict(
                {
                    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
                    "builder": {"thumbnail": {"enabled": False}},
                }
            )
        return _context


def _signer(creds: Credentials) -> Any:
    import c2pa

    key = (creds.chain_pem, creds.key_pem)
    with _lock:
        signer = _signers.get(key)
        if signer is None:
            try:
                info = c2pa.C2paSignerInfo(
                    c2pa.C2paSigningAlg.ES256, creds.chain_pem, creds.key_pem, None
                )
                signer = c2pa.Signer.from_info(info)
            except (c2pa.C2paError, ValueError) as exc:
                raise SigningError(f"cannot sign with {creds.source}: {exc}") from None
            _signers[key] = signer
        return signer


def sign(
    data: bytes,
    mime: str,
    recipe: Recipe,
    *,
    settings: Any = None,
    title: str = "",
    creds: Credentials | None = None,
) -> bytes:
    """``data`` (an image file's bytes) with a signed C2PA manifest embedded."""
    import c2pa

    creds = creds or credentials(settings)
    builder = c2pa.Builder(manifest_definition(recipe, title, mime), c2pa_context())
    for i, source in enumerate(recipe.sources):
        _add_source(builder, source, f"source-{i}")
    out = io.BytesIO()
    try:
        builder.sign(_signer(creds), mime, io.BytesIO(data), out)
    except c2pa.C2paError as exc:
        raise SigningError(f"signing failed with {creds.source}: {exc}") from None
    return out.getvalue()


def _add_source(builder: Any, source: Path, label: str) -> None:
    import c2pa

    from studio.errors import StudioError
    from studio.fsutil import regular_file
    from studio.provenance.reading import MAX_FILE_BYTES, sniff_mime

    try:
        regular_file(source, what="source image", max_bytes=MAX_FILE_BYTES)
        data = source.read_bytes()
    except (OSError, StudioError) as exc:
        log.warning("the source image %s is not listed as an ingredient: %s", source.name, exc)
        return
    mime = sniff_mime(data)
    ingredient = {"title": source.name, "relationship": "parentOf", "label": label}
    try:
        builder.add_ingredient(ingredient, mime or "image/png", io.BytesIO(data))
    except c2pa.C2paError as exc:
        log.warning("the source image %s is not listed as an ingredient: %s", source.name, exc)
