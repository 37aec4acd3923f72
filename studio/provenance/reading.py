"""Checking an image's provenance: its C2PA manifest and Studio's watermark.

:func:`verify` reads any image file (not only Studio's) and says whether it carries a
manifest, whether the manifest validates (with the validation codes), what it says was
done and from what, whether the pixels changed after signing, and whether the
watermark is there. Nothing is fetched: a signer is "untrusted" unless its CA is given.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.provenance.watermark import WatermarkReading

#: The same limits as Load Image's (nodes.image): a bigger file is not read.
MAX_FILE_BYTES = 512 * 2**20
MAX_PIXELS = 8192 * 8192
#: A local (or any not-listed) signer is reported so; the manifest is still valid.
UNTRUSTED = "signingCredential.untrusted"
#: Failure codes that mean the bytes changed after signing.
CHANGED = ("dataHash.mismatch", "boxesHash.mismatch", "bmffHash.mismatch", "hashedURI.mismatch")

EXIT_VALID, EXIT_NONE, EXIT_NOT_IMAGE = 0, 1, 2


def sniff_mime(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] in (b"II*\0", b"MM\0*"):
        return "image/tiff"
    return None


@dataclass
class Report:
    """What :func:`verify` found in one file."""

    path: str
    image: bool = False  # a readable image
    error: str = ""  # why it is not (or why its manifest could not be read)
    size: tuple[int, int] = (0, 0)
    manifest: bool = False
    validation_state: str = ""  # c2pa's: Valid, Trusted or Invalid
    failures: list[str] = field(default_factory=list)  # validation codes that failed
    signer: dict[str, str] = field(default_factory=dict)
    local_signer: bool = False
    software: str = ""
    actions: list[dict[str, str]] = field(default_factory=list)
    ingredients: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, str]] = field(default_factory=list)
    watermark: WatermarkReading | None = None

    @property
    def tampered(self) -> bool:
        return any(code.endswith(CHANGED) for code in self.failures)

    @property
    def valid(self) -> bool:
        return self.manifest and self.validation_state in ("Valid", "Trusted")

    @property
    def status(self) -> str:
        """One word for a badge: signed, tampered, invalid, watermarked, none, unreadable."""
        if not self.image:
            return "unreadable"
        if self.manifest and self.tampered:
            return "tampered"
        if self.valid:
            return "signed"
        if self.manifest or self.error:
            return "invalid"
        if self.watermark is not None and self.watermark.found:
            return "watermarked"
        return "none"

    @property
    def exit_code(self) -> int:
        if not self.image:
            return EXIT_NOT_IMAGE
        return EXIT_VALID if self.valid else EXIT_NONE

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "image": self.image,
            "error": self.error,
            "size": list(self.size),
            "manifest": self.manifest,
            "valid": self.valid,
            "validation_state": self.validation_state,
            "failures": self.failures,
            "tampered": self.tampered,
            "signer": self.signer,
            "local_signer": self.local_signer,
            "software": self.software,
            "actions": self.actions,
            "ingredients": self.ingredients,
            "models": self.models,
            "watermark": self.watermark.to_json() if self.watermark else None,
        }

    def summary(self) -> str:
        return {
            "signed": "signed: valid C2PA manifest"
            + (" (untrusted signer)" if UNTRUSTED in self.failures else ""),
            "tampered": "tampered: changed after it was signed",
            "invalid": "invalid C2PA manifest",
            "watermarked": "no C2PA manifest; Studio's watermark found",
            "none": "no provenance",
            "unreadable": "not an image",
        }[self.status]

    def lines(self) -> list[str]:
        """The report as a reader sees it (``studio verify``, the viewer's details)."""
        out = [f"{self.path}: {self.summary()}"]
        if self.error:
            out.append(f"  {self.error}")
        if not self.image:
            return out
        if self.manifest:
            state = self.validation_state or "unknown"
            out.append(f"  manifest: {state}")
            if self.failures:
                out.append(f"  validation codes: {', '.join(self.failures)}")
            if self.signer:
                who = self.signer.get("common_name") or "?"
                out.append(f"  signed by: {who} (issuer: {self.signer.get('issuer', '?')})")
            if self.local_signer:
                out.append("  the signer is a certificate Studio made on this computer")
            if self.software:
                out.append(f"  made with: {self.software}")
            for a in self.actions:
                source = a.get("digitalSourceType", "").rsplit("/", 1)[-1]
                out.append(f"  action: {a.get('action', '?')}" + (f" ({source})" if source else ""))
            for ing in self.ingredients:
                has = ", has its own manifest" if ing.get("manifest") else ""
                out.append(
                    f"  ingredient: {ing.get('title', '?')} ({ing.get('relationship')}{has})"
                )
            for m in self.models:
                digest = (m.get("sha256") or "")[:12]
                out.append(f"  model: {m.get('name')} ({m.get('kind')}, sha256 {digest or '?'})")
        else:
            out.append("  no C2PA manifest")
        wm = self.watermark
        if wm is not None:
            if not wm.checked:
                out.append("  watermark: image too small to carry one")
            else:
                found = "found" if wm.found else "not found"
                out.append(f"  watermark: {found} ({wm.bit_errors}/48 bits differ)")
        return out


def _read_file(path: Path) -> bytes:
    from studio.errors import StudioError
    from studio.fsutil import regular_file

    try:
        regular_file(path, what="file", max_bytes=MAX_FILE_BYTES)
    except StudioError as exc:
        raise ValueError(str(exc)) from None
    return path.read_bytes()


def _pixels(data: bytes) -> Any:
    """The image's RGB pixels (numpy), or raises ValueError saying why not."""
    import warnings

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"{im.width}x{im.height} is larger than Studio reads")
            im.load()
    except UnidentifiedImageError:
        raise ValueError("not an image file Studio can read") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"the image cannot be decoded (damaged or cut short): {exc}") from None
    return np.asarray(im.convert("RGB"))


def _read_manifest(report: Report, data: bytes, mime: str, trust: bytes | None) -> None:
    import c2pa

    from studio.provenance import MODELS_LABEL, c2pa_context

    context = c2pa_context()
    if trust:
        context = c2pa.Context.from_dict(
            {
                "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
                "trust": {"user_anchors": trust.decode("ascii", "replace")},
            }
        )
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
    except c2pa.C2paError as exc:
        report.manifest = True
        report.validation_state = "Invalid"
        report.error = f"the C2PA manifest cannot be read: {exc}"
        return
    if reader is None:
        return
    with reader:
        report.manifest = True
        report.validation_state = reader.get_validation_state() or ""
        results = reader.get_validation_results() or {}
        active = reader.get_active_manifest() or {}
    codes = results.get("activeManifest", {}).get("failure", [])
    report.failures = [c.get("code", "") for c in codes]
    for delta in results.get("ingredientDeltas", []) or []:
        for c in (delta.get("validationDeltas") or {}).get("failure", []):
            report.failures.append(f"ingredient: {c.get('code', '')}")
    info = active.get("signature_info") or {}
    report.signer = {k: str(info[k]) for k in ("issuer", "common_name", "alg") if k in info}
    from studio.provenance.certs import LOCAL_ORGANIZATION

    report.local_signer = report.signer.get("issuer") == LOCAL_ORGANIZATION
    gen = active.get("claim_generator_info") or []
    if gen and isinstance(gen[0], dict):
        report.software = f"{gen[0].get('name', '')} {gen[0].get('version', '')}".strip()
    for assertion in active.get("assertions", []):
        label, body = assertion.get("label", ""), assertion.get("data") or {}
        if label.startswith("c2pa.actions"):
            for a in body.get("actions", []):
                entry = {"action": str(a.get("action", ""))}
                if a.get("digitalSourceType"):
                    entry["digitalSourceType"] = str(a["digitalSourceType"])
                report.actions.append(entry)
        elif label == MODELS_LABEL:
            report.models = [
                {k: str(m.get(k, "")) for k in ("kind", "name", "sha256")}
                for m in body.get("models", [])
                if isinstance(m, dict)
            ]
    for ing in active.get("ingredients", []):
        report.ingredients.append(
            {
                "title": str(ing.get("title", "")),
                "relationship": str(ing.get("relationship", "")),
                "manifest": bool(ing.get("active_manifest")),
            }
        )


def verify(path: str | Path, *, trust: bytes | None = None, data: bytes | None = None) -> Report:
    """The provenance of the image file at ``path`` (``data``: its bytes, when already
    read). ``trust``: PEM certificates of CAs to trust (e.g. Studio's local CA)."""
    from studio.provenance import watermark

    report = Report(str(path))
    try:
        data = _read_file(Path(path)) if data is None else data
    except (OSError, ValueError) as exc:
        report.error = f"cannot read the file: {getattr(exc, 'strerror', None) or exc}"
        return report
    mime = sniff_mime(data)
    try:
        pixels = _pixels(data)
    except ValueError as exc:
        report.error = str(exc)
        return report
    report.image = True
    report.size = (pixels.shape[1], pixels.shape[0])
    if mime is not None:
        _read_manifest(report, data, mime, trust)
    report.watermark = watermark.detect(pixels)
    return report


def reports_json(reports: list[Report]) -> str:
    return json.dumps([r.to_json() for r in reports], indent=2)
