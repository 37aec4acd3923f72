"""Automatic1111 / Forge generation parameters ("infotext") turned into a Studio workflow.

An infotext is the prompt (one or more lines), an optional ``Negative prompt:`` (which may
continue over lines), and a last line of ``Key: value`` pairs joined by ``, `` (a value with
a comma, colon or newline is JSON-quoted). LoRAs are ``<lora:name:weight>`` tags in the
prompt. The import builds the graph A1111 ran (txt2img, and hires fix when its keys are
there); whatever does not map is said in the report and kept in a note on the canvas.
No Qt, no torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple

from studio.errors import StudioError, WorkflowFileError
from studio.graph.importers import ImportResult, saveable
from studio.graph.importers.comfyui_map import (
    COMFY_ONLY_SAMPLERS,
    COMFY_SCHEDULES,
    SCHEDULE_FALLBACK,
)
from studio.graph.seeds import SeedControl, set_seed_control
from studio.graph.workflow import Note, Workflow, new_id

if TYPE_CHECKING:
    from studio.graph.registry import Registry
    from studio.modelfiles import ModelFiles

KIND = "a1111"

#: ``find_model(kind, name, short_hash)``: the name Studio knows a model file by, or None.
FindModel = Callable[[str, str, "str | None"], "str | None"]

# -- samplers -------------------------------------------------------------------------------


class SamplerMapping(NamedTuple):
    """An A1111 sampler as Studio's sampler and scheduler; ``note`` when it is only near."""

    sampler: str
    scheduler: str | None = None  # None: the Schedule type (or the default) decides
    note: str = ""
    #: The schedule A1111 (1.9 and later) uses for this sampler with "Schedule type: Automatic".
    automatic: str = "normal"


#: A1111 / Forge sampler names (lower case) -> Studio. Older A1111 (before 1.9) folds the
#: schedule into the name ("DPM++ 2M Karras"); newer writes ``Schedule type`` apart.
SAMPLERS: dict[str, SamplerMapping] = {
    "euler a": SamplerMapping("euler_ancestral"),
    "euler": SamplerMapping("euler"),
    "lms": SamplerMapping("lms"),
    "heun": SamplerMapping("heun"),
    "dpm2": SamplerMapping("dpm_2", automatic="karras"),
    "dpm2 a": SamplerMapping("dpm_2_ancestral", automatic="karras"),
    # ComfyUI's DPM++ 2S a in Studio: with a ComfyUI schedule only (map_sampler picks it)
    "dpm++ 2s a": SamplerMapping("dpmpp_2s_ancestral", automatic="karras"),
    "uni pc bh2": SamplerMapping("uni_pc_bh2"),
    # ComfyUI's iPNDM (reForge's "iPNDM"): with a ComfyUI schedule only, as DPM++ 2S a
    "ipndm": SamplerMapping("ipndm"),
    "dpm++ 2m": SamplerMapping("dpmpp_2m", automatic="karras"),
    "dpm++ sde": SamplerMapping("dpmpp_sde", automatic="karras"),
    "dpm++ 2m sde": SamplerMapping("dpmpp_2m_sde", automatic="exponential"),
    "dpm++ 2m sde heun": SamplerMapping(
        "dpmpp_2m_sde",
        note="Studio has no DPM++ 2M SDE Heun; DPM++ 2M SDE is nearest",
        automatic="exponential",
    ),
    "dpm++ 3m sde": SamplerMapping("dpmpp_3m_sde", automatic="exponential"),
    "dpm fast": SamplerMapping(
        "dpmpp_2m", note="Studio has no DPM fast; DPM++ 2M (dpmpp_2m) is nearest"
    ),
    "dpm adaptive": SamplerMapping(
        "dpmpp_2m", note="Studio has no DPM adaptive; DPM++ 2M (dpmpp_2m) is nearest"
    ),
    "restart": SamplerMapping("heun", note="Studio has no Restart sampler; Heun is nearest"),
    "ddim": SamplerMapping("ddim"),
    "ddim cfg++": SamplerMapping("ddim", note="Studio has no DDIM CFG++; plain DDIM is used"),
    "plms": SamplerMapping("pndm"),
    "unipc": SamplerMapping("uni_pc"),
    "lcm": SamplerMapping("lcm"),
    "ddpm": SamplerMapping("ddpm"),
    "deis": SamplerMapping("deis"),
    "euler a turbo": SamplerMapping(
        "euler_ancestral", note="Studio has no Euler A Turbo; Euler a is nearest"
    ),
}

#: A1111 schedule types (lower case, also the suffix of old combined sampler names) -> Studio.
SCHEDULES: dict[str, SamplerMapping] = {
    "automatic": SamplerMapping("", "normal"),
    "uniform": SamplerMapping("", "normal"),
    "normal": SamplerMapping("", "normal"),
    "karras": SamplerMapping("", "karras"),
    "exponential": SamplerMapping("", "exponential"),
    "sgm uniform": SamplerMapping("", "sgm_uniform"),
    "beta": SamplerMapping("", "beta"),
    "polyexponential": SamplerMapping(
        "", "exponential", "Studio has no Polyexponential schedule; Exponential is nearest"
    ),
    "kl optimal": SamplerMapping("", "normal", "Studio has no KL Optimal schedule; normal used"),
    "align your steps": SamplerMapping(
        "", "normal", "Studio has no Align Your Steps schedule; normal used"
    ),
    "simple": SamplerMapping("", "simple"),
    "ddim": SamplerMapping("", "normal", "Studio has no DDIM schedule; normal used"),
    "turbo": SamplerMapping("", "normal", "Studio has no Turbo schedule; normal used"),
    # Studio's ComfyUI schedules, as Studio's Save Image writes them ("Comfy karras")
    **{
        f"comfy {name}": SamplerMapping("", "comfy_" + name.replace(" ", "_"))
        for name in (
            "normal",
            "karras",
            "exponential",
            "simple",
            "sgm uniform",
            "ddim uniform",
            "kl optimal",
            "beta",
            "linear quadratic",
            "sd turbo",
        )
    },
}


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def map_sampler(name: str, schedule: str | None = None) -> tuple[str, str, list[str]]:
    """Studio's (sampler, scheduler) for A1111's ``Sampler`` and ``Schedule type`` values,
    and what did not map exactly."""
    notes: list[str] = []
    key = _norm(name)
    scheduler = "normal"
    in_name: str | None = None  # a schedule named in the sampler's name wins, as in A1111
    mapping = SAMPLERS.get(key)
    if mapping is None:
        # Old combined names: "DPM++ 2M Karras", "DPM++ 3M SDE Exponential", "LMS Karras".
        for suffix in sorted(SCHEDULES, key=len, reverse=True):
            base = key.removesuffix(" " + suffix)
            if base != key and base in SAMPLERS:
                mapping, in_name = SAMPLERS[base], SCHEDULES[suffix].scheduler or "normal"
                if SCHEDULES[suffix].note:
                    notes.append(SCHEDULES[suffix].note)
                break
    if mapping is None:
        notes.append(f"Studio has no sampler {name!r}; euler is used")
        mapping = SamplerMapping("euler")
    if mapping.note:
        notes.append(mapping.note)
    if in_name is not None:
        scheduler = in_name
    elif schedule is not None and _norm(schedule) == "automatic":
        # The sampler's own default; an infotext without a Schedule type is older than
        # A1111 1.9, where a name without a schedule suffix meant the plain schedule.
        scheduler = mapping.automatic
    elif schedule is not None and _norm(schedule):
        sched = SCHEDULES.get(_norm(schedule))
        if sched is None:
            notes.append(f"Studio has no schedule type {schedule!r}; normal is used")
            scheduler = "normal"
        else:
            scheduler = sched.scheduler or "normal"
            if sched.note:
                notes.append(sched.note)
    scheduler = mapping.scheduler or scheduler
    if mapping.sampler in COMFY_ONLY_SAMPLERS and scheduler not in SCHEDULE_FALLBACK:
        # Studio has this sampler only as ComfyUI's, which runs with ComfyUI's schedules
        comfy = COMFY_SCHEDULES.get(scheduler, "comfy_normal")
        notes.append(
            f"{name} runs in Studio with ComfyUI's schedules: {scheduler!r} became {comfy!r}"
        )
        scheduler = comfy
    return mapping.sampler, scheduler, notes


# -- parsing -----------------------------------------------------------------------------------

# A1111's pattern for the last line (modules/infotext_utils.py), keys of one letter allowed.
_PARAM = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_NETWORK = re.compile(r"<(\w+):([^<>]+)>")
_NEGATIVE = "Negative prompt:"


class Lora(NamedTuple):
    """A ``<lora:name:weight>`` tag (``<lora:name:te:unet>`` gives the two strengths)."""

    name: str
    weight: float
    clip_weight: float


@dataclass
class Infotext:
    """An infotext taken apart. ``prompt`` has the LoRA tags taken out (they are in ``loras``);
    ``embeddings`` are the names listed in ``TI hashes``."""

    prompt: str
    negative: str
    params: dict[str, str]
    loras: list[Lora] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    #: Other ``<kind:...>`` tags taken out of the prompt (hypernetworks, ...), as written.
    other_networks: list[str] = field(default_factory=list)
    #: Problems met while reading (a LoRA weight that is not a number, ...).
    problems: list[str] = field(default_factory=list)


def looks_like_infotext(text: str) -> bool:
    """Whether ``text`` ends in a parameters line with ``Steps:`` and ``Seed:`` (a paste test)."""
    lines = text.strip().splitlines()
    return bool(lines) and "Steps:" in lines[-1] and "Seed:" in lines[-1]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def parse_params_line(line: str) -> dict[str, str] | None:
    """The ``Key: value`` pairs of a parameters line, in order; None when it is not one."""
    params: dict[str, str] = {}
    pos = 0
    # Pair after pair from where the last ended (searching instead would be quadratic in
    # the length of a line of words without colons).
    while line[pos:].strip():
        m = _PARAM.match(line, pos)
        if m is None or m.end() == pos:
            return None  # text that is not a pair: not a parameters line
        params[m.group(1).strip()] = _unquote(m.group(2))
        pos = m.end()
    return params if "Steps" in params else None


def parse_infotext(text: str, *, source: str = "<text>") -> Infotext:
    """Take an infotext apart. Raises :class:`WorkflowFileError` (naming ``source``) when the
    text has no last line of generation parameters with ``Steps``."""
    if not isinstance(text, str) or not text.strip():
        raise WorkflowFileError(source, "empty text: no A1111 generation parameters in it")
    lines = text.strip().replace("\r\n", "\n").replace("\r", "\n").split("\n")
    params = parse_params_line(lines[-1])
    if params is None:
        raise WorkflowFileError(
            source,
            "not A1111/Forge generation parameters: the last line should be 'Key: value' pairs "
            "such as 'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512'",
        )
    prompt: list[str] = []
    negative: list[str] = []
    into = prompt
    for line in lines[:-1]:
        if line.lstrip().startswith(_NEGATIVE) and into is prompt:
            into = negative
            line = line.lstrip()[len(_NEGATIVE) :].lstrip()
        into.append(line)
    info = Infotext("\n".join(prompt).strip(), "\n".join(negative).strip(), params)
    info.prompt = _take_networks(info.prompt, info, negative=False)
    info.negative = _take_networks(info.negative, info, negative=True)
    info.embeddings = list(_hash_list(params.get("TI hashes", "")))
    return info


#: The largest hires-fix scale taken from parameters (Studio's Latent Upscale goes to 16).
MAX_HIRES_FACTOR = 16.0


def _whole(raw: str) -> int:
    """A whole number as A1111 writes it ("20", "20.0"), exactly (a 64-bit seed loses
    digits through a float); ValueError for text, infinities and numbers with over
    4,300 digits."""
    text = raw.strip()
    if re.fullmatch(r"[+-]?\d{1,4300}", text):
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(raw)
    return int(value)


def _take_networks(text: str, info: Infotext, *, negative: bool) -> str:
    """``text`` without its ``<kind:...>`` tags; LoRAs go to ``info.loras``."""

    def take(m: re.Match[str]) -> str:
        kind, args = m.group(1).lower(), m.group(2).split(":")
        if negative or kind not in ("lora", "lyco"):
            info.other_networks.append(m.group(0))
            return ""
        named = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args[1:] if "=" in a}
        plain = [a for a in args[1:] if "=" not in a]
        try:
            te = float(named.get("te", plain[0] if plain else 1.0))
            unet = float(named.get("unet", plain[1] if len(plain) > 1 else te))
            if not (math.isfinite(te) and math.isfinite(unet)):
                raise ValueError
        except ValueError:
            info.problems.append(f"LoRA tag {m.group(0)} has a weight that is not a number; 1 used")
            te = unet = 1.0
        info.loras.append(Lora(args[0].strip(), unet, te))
        return ""

    out, taken = _NETWORK.subn(take, text)
    if not taken:
        return text
    # Tags usually sit between commas: tidy the leftovers (", , " and trailing commas).
    out = re.sub(r"[ \t]*,(?:[ \t]*,)+", ",", out)
    out = re.sub(r"[ \t]+,", ",", out)
    out = re.sub(r"[ \t]{2,}", " ", out)
    return out.strip().strip(",").strip()


def _hash_list(value: str) -> dict[str, str]:
    """``"name: hash, name2: hash2"`` (Lora hashes, TI hashes) as a dict."""
    found = {}
    for part in value.split(","):
        name, sep, h = part.rpartition(":")
        if sep and name.strip():
            found[name.strip()] = h.strip()
    return found


# -- unsupported prompt syntax ----------------------------------------------------------------

_EDITING = re.compile(r"\[[^\[\]]*:\s*[\d.]+\s*\]")
_ALTERNATING = re.compile(r"\[[^\[\]:]*\|[^\[\]]*\]")


def prompt_syntax_problems(text: str, which: str) -> list[str]:
    """A1111 prompt syntax Studio's Text Encode reads differently (it has no BREAK, AND,
    prompt editing or alternating words: they stay in the prompt as plain text)."""
    found = []
    if re.search(r"\bBREAK\b", text):
        found.append(
            f"{which}: BREAK (start a new 75-token chunk) is not supported; it is read as a word"
        )
    if re.search(r"\bAND\b", text):
        found.append(f"{which}: AND (composable prompts) is not supported; it is read as a word")
    if _EDITING.search(text):
        found.append(
            f"{which}: prompt editing [from:to:when] is not supported; it is read as plain text"
        )
    if re.search(r"(?<!\\)[(\[]", text):
        found.append(
            f"{which}: weights like (word:1.3) are applied as ComfyUI does (blended from the "
            "empty prompt), not A1111's way (scaled, then the mean restored): weighted words "
            "may come out somewhat stronger or weaker"
        )
    if _ALTERNATING.search(text):
        found.append(f"{which}: alternating words [a|b] are not supported; read as plain text")
    return found


# -- model lookup ------------------------------------------------------------------------------


def _strip_ext(name: str) -> str:
    p = PurePosixPath(name)
    return str(p.with_suffix("")) if p.suffix.lower() in _WEIGHT_EXTS else name


_WEIGHT_EXTS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


def match_name(candidates: Iterable[str], name: str) -> str | None:
    """The candidate that ``name`` means: the same path, the same path without extension,
    or the same file name without extension in any subfolder (case ignored)."""
    want = name.replace("\\", "/").strip().lower()
    if not want:
        return None
    cands = list(candidates)
    tests: list[Callable[[str], str]] = [
        lambda c: c.lower(),
        lambda c: _strip_ext(c.lower()),
        lambda c: PurePosixPath(_strip_ext(c.lower())).name,
    ]
    wants = [want, _strip_ext(want), PurePosixPath(_strip_ext(want)).name]
    for test, w in zip(tests, wants, strict=True):
        for c in cands:
            if test(c) == w:
                return c
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def legacy_hash(path: Path) -> str:
    """A1111's old 8-digit model hash: SHA-256 of 64 KiB from 1 MiB into the file."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def addnet_hash(path: Path) -> str:
    """SHA-256 of a .safetensors file's tensor data (what follows its JSON header): the hash
    A1111 writes for a .safetensors LoRA, so editing the metadata does not change it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        header = f.read(8)
        if len(header) < 8:
            raise ValueError(f"{path} is too short for a safetensors file")
        f.seek(8 + int.from_bytes(header, "little"))
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: A1111's names of its built-in upscalers -> the file names they download.
UPSCALER_FILES = {
    "r-esrgan 4x+": "RealESRGAN_x4plus",
    "r-esrgan 4x+ anime6b": "RealESRGAN_x4plus_anime_6B",
    "r-esrgan 2x+": "RealESRGAN_x2plus",
    "esrgan_4x": "ESRGAN_x4",
    "swinir 4x": "SwinIR_4x",
}


class HashKind(StrEnum):
    """The hashes A1111 writes into infotexts."""

    #: SHA-256 of the whole file (``Model hash``: 10 digits; ``Lora hashes`` of .pt files).
    FULL = "full"
    #: SHA-256 of a .safetensors file after its header (``Lora hashes``: 12 digits).
    ADDNET = "addnet"
    #: A1111's old 8-digit ``Model hash``.
    LEGACY = "legacy"


class ModelFinder:
    """Finds a model by name, then (only when that fails) by A1111's short hash: the first
    10 (checkpoints) or 12 (LoRAs) hex digits of the file's SHA-256 (for a .safetensors LoRA,
    of what follows its header), or the old 8-digit hash. Lists each kind once and hashes
    files lazily, remembering each file's hash."""

    def __init__(self, model_files: ModelFiles):
        self.model_files = model_files
        self._lists: dict[str, list[str]] = {}
        self._hashes: dict[tuple[str, int, int, HashKind], str] = {}

    def refresh(self) -> None:
        """List the folders again on the next lookup (hashes stay remembered: they are kept
        by path, size and modification time)."""
        self._lists.clear()

    def names(self, kind: str) -> list[str]:
        if kind not in self._lists:
            self._lists[kind] = self.model_files.list(kind)
        return self._lists[kind]

    def __call__(self, kind: str, name: str, short_hash: str | None = None) -> str | None:
        names = self.names(kind)
        found = match_name(names, name)
        if found is None and kind == "upscale_models":
            alias = UPSCALER_FILES.get(_norm(name))
            found = match_name(names, alias) if alias else None
        if found is not None or not short_hash:
            return found
        want = short_hash.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{8,64}", want):
            return None
        if len(want) == 8:
            modes = [HashKind.LEGACY]
        else:
            modes = [HashKind.FULL, HashKind.ADDNET] if kind == "loras" else [HashKind.FULL]
        for candidate in names:
            for mode in modes:
                if mode is HashKind.ADDNET and not candidate.lower().endswith(".safetensors"):
                    continue
                if self._hash_of(kind, candidate, mode).startswith(want):
                    return candidate
        return None

    def _hash_of(self, kind: str, name: str, mode: HashKind) -> str:
        try:
            path = self.model_files.resolve(kind, name)
            st = path.stat()
        except (StudioError, OSError):
            return ""
        if path.is_dir():
            return ""
        key = (str(path), st.st_size, st.st_mtime_ns, mode)
        if key not in self._hashes:
            hasher = {
                HashKind.FULL: file_sha256,
                HashKind.ADDNET: addnet_hash,
                HashKind.LEGACY: legacy_hash,
            }[mode]
            try:
                self._hashes[key] = hasher(path)
            except (OSError, ValueError):
                return ""
        return self._hashes[key]


def model_finder(model_files: ModelFiles) -> ModelFinder:
    """The default ``find_model`` for :func:`import_infotext`, over ``model_files``."""
    return ModelFinder(model_files)


# -- building the workflow ---------------------------------------------------------------------

#: Keys the import turns into nodes (everything else goes into the note).
MAPPED_KEYS = frozenset(
    {
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size",
        "Model",
        "Model hash",
        "VAE",
        "VAE hash",
        "Clip skip",
        "Denoising strength",
        "Hires upscale",
        "Hires resize",
        "Hires steps",
        "Hires upscaler",
        "Hires sampler",
        "Hires schedule type",
        "Hires CFG Scale",
        "Hires prompt",
        "Hires negative prompt",
        "Lora hashes",
        "TI hashes",
        "RNG",
    }
)
#: Latent upscalers A1111 offers -> Latent Upscale's method.
LATENT_UPSCALERS = {
    "latent": "bilinear",
    "latent (antialiased)": "bilinear",
    "latent (bicubic)": "bicubic",
    "latent (bicubic antialiased)": "bicubic",
    "latent (nearest)": "nearest-exact",
    "latent (nearest-exact)": "nearest-exact",
}
#: Plain image resizers A1111 offers as hires upscalers -> Scale Image's method.
IMAGE_RESIZERS = {"none": "lanczos", "lanczos": "lanczos", "nearest": "nearest"}

COLUMN, ROW = 300.0, 300.0
#: The Sampler's largest steps value.
MAX_STEPS = 1000


def hires_schedule(steps: int, denoise: float) -> tuple[int, float]:
    """Studio Sampler (steps, denoise) for A1111's hires pass of ``steps`` at ``denoise``.

    A1111 runs exactly ``steps`` steps: the last ones of a schedule of ``steps / denoise``
    steps. Studio's Sampler runs the last ``int(steps * denoise)`` of its ``steps``, so it
    gets the longer schedule and the denoise that leaves exactly ``steps`` of it.
    """
    strength = min(denoise, 0.999)
    if strength <= 0 or steps <= 0:
        return steps, denoise
    total = max(int(steps / strength), steps)
    fraction = steps / total
    while int(total * fraction) < steps:  # 10 / 22 * 22 may come out as 9.999...
        fraction = math.nextafter(fraction, 2.0)
    return total, min(fraction, 1.0)


class _Builder:
    def __init__(self, wf: Workflow):
        self.wf = wf
        self.rows: dict[int, int] = {}

    def add(self, col: int, type_id: str, params: dict[str, Any] | None = None, title=""):
        row = self.rows.get(col, 0)
        self.rows[col] = row + 1
        return self.wf.add_node(type_id, params, title=title, pos=(col * COLUMN, row * ROW)).id


class _Import:
    """One import: the parsed infotext, the workflow being built and the report."""

    def __init__(
        self,
        info: Infotext,
        registry: Registry,
        source: str,
        find: FindModel | None,
        embedding_files: Iterable[str],
    ):
        self.info, self.source, self.find = info, source, find
        self.embedding_files = tuple(embedding_files)
        if not self.embedding_files and isinstance(find, ModelFinder):
            self.embedding_files = tuple(find.names("embeddings"))
        self.wf = Workflow(registry)
        self.b = _Builder(self.wf)
        self.report: list[str] = list(info.problems)
        self.unused: dict[str, str] = {k: v for k, v in info.params.items() if k not in MAPPED_KEYS}
        #: How a value that looks different maps (shown in the note, not a difference).
        self.explained: list[str] = []
        #: Where the prompts' text encoder comes from (after the LoRAs), and its clip skip.
        self.clip_src: tuple[str, str] = ("", "clip")
        self.clip_skip = 1

    # values

    def number(self, key: str, default: Any, kind: type = int) -> Any:
        raw = self.info.params.get(key)
        if raw is None:
            return default
        try:
            value = _whole(raw) if kind is int else kind(raw)
        except ValueError:
            self.report.append(f"{key}: {raw!r} is not a number; {default} is used")
            self.unused[key] = raw
            return default
        if (isinstance(value, float) and not math.isfinite(value)) or abs(value) >= 2**64:
            self.report.append(
                f"{key}: {raw[:40]!r} is not a number Studio can use; {default} is used"
            )
            self.unused[key] = raw
            return default
        return value

    def size(self, key: str) -> tuple[int, int] | None:
        raw = self.info.params.get(key)
        if raw is None:
            return None
        m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", raw)
        if m is None:
            self.report.append(f"{key}: {raw!r} is not WIDTHxHEIGHT; ignored")
            self.unused[key] = raw
            return None
        return int(m.group(1)), int(m.group(2))

    def model(self, kind: str, name: str, short_hash: str | None, what: str) -> str | None:
        if self.find is None:
            return name or None
        found = self.find(kind, name, short_hash)
        if found is None:
            self.report.append(
                f"{what} {name or short_hash!r} was not found among your {kind} models"
                + (f" (not by name, nor by hash {short_hash})" if short_hash else "")
            )
        return found

    # graph

    def build(self) -> Workflow:
        p, b, wf = self.info.params, self.b, self.wf
        ckpt_name = self.checkpoint()
        ckpt = b.add(0, "load_checkpoint", {"ckpt_name": ckpt_name or p.get("Model", "")})
        vae = self.vae(ckpt)
        model_src, clip_src = self.loras(ckpt)

        clip_skip = self.number("Clip skip", 1)
        if not 1 <= clip_skip <= 12:
            self.report.append(f"Clip skip {clip_skip} is out of Studio's range 1..12; 1 is used")
            self.unused["Clip skip"] = p["Clip skip"]
            clip_skip = 1
        enc_col = 2 + max(len(self.info.loras), 0)
        pos = b.add(
            enc_col, "text_encode", {"text": self.info.prompt, "clip_skip": clip_skip}, "Prompt"
        )
        neg = b.add(
            enc_col,
            "text_encode",
            {"text": self.info.negative, "clip_skip": clip_skip},
            "Negative prompt",
        )
        wf.connect(*clip_src, pos, "clip")
        wf.connect(*clip_src, neg, "clip")
        self.clip_src, self.clip_skip = clip_src, clip_skip
        self.report.extend(prompt_syntax_problems(self.info.prompt, "Prompt"))
        self.report.extend(prompt_syntax_problems(self.info.negative, "Negative prompt"))
        self.embeddings(pos, neg)

        width, height = self.size("Size") or (512, 512)
        latent = b.add(enc_col, "empty_latent", {"width": width, "height": height, "batch_size": 1})
        sampler, scheduler, notes = map_sampler(p.get("Sampler", "Euler a"), p.get("Schedule type"))
        self.report.extend(notes)
        seed = self.number("Seed", 0)
        if seed < 0:
            self.report.append(f"Seed {seed} is negative; 0 is used")
            seed = 0
        steps = self.number("Steps", 20)
        cfg = self.number("CFG scale", 7.0, float)
        common = {"seed": seed, "cfg": cfg, "sampler": sampler, "scheduler": scheduler}
        first = b.add(enc_col + 1, "sampler", {**common, "steps": steps, "denoise": 1.0})
        set_seed_control(wf, first, "seed", SeedControl.FIXED)
        wf.connect(*model_src, first, "model")
        wf.connect(pos, "conditioning", first, "positive")
        wf.connect(neg, "conditioning", first, "negative")
        wf.connect(latent, "latent", first, "latent")

        out = self.hires(
            first, (width, height), common, steps, model_src, vae, pos, neg, enc_col + 2
        )
        if out is None:
            for key in ("Hires prompt", "Hires negative prompt"):
                if p.get(key):
                    self.unused[key] = p[key]
            if "Denoising strength" in p:
                self.report.append(
                    f"Denoising strength {p['Denoising strength']} without hires fix means an "
                    "img2img image, whose input image is not in the parameters: imported as "
                    "text to image"
                )
                self.unused["Denoising strength"] = p["Denoising strength"]
            out = first
        last = max(b.rows) + 1  # the column after the last sampler
        decode = b.add(last, "vae_decode")
        wf.connect(out, "latent", decode, "latent")
        wf.connect(*vae, decode, "vae")
        save = b.add(last + 1, "save_image", {"filename_prefix": "a1111"})
        wf.connect(decode, "image", save, "images")
        self.rng()
        self.note()
        return wf

    def checkpoint(self) -> str | None:
        p = self.info.params
        name, short_hash = p.get("Model", ""), p.get("Model hash")
        if not name and not short_hash:
            self.report.append("no Model in the parameters: choose a checkpoint")
            return None
        return self.model("checkpoints", name, short_hash, "Checkpoint")

    def vae(self, ckpt: str) -> tuple[str, str]:
        p = self.info.params
        name = p.get("VAE")
        if not name or _norm(name) in ("automatic", "none"):
            return ckpt, "vae"
        found = self.model("vae", name, p.get("VAE hash"), "VAE")
        if found is None:
            self.report.append("the checkpoint's own VAE is used instead")
            self.unused["VAE"] = name
            return ckpt, "vae"
        return self.b.add(0, "load_vae", {"vae_name": found}), "vae"

    def loras(self, ckpt: str) -> tuple[tuple[str, str], tuple[str, str]]:
        model_src, clip_src = (ckpt, "model"), (ckpt, "clip")
        hashes = _hash_list(self.info.params.get("Lora hashes", ""))
        for col, lora in enumerate(self.info.loras, start=1):
            found = self.model("loras", lora.name, hashes.get(lora.name), "LoRA")
            node = self.b.add(
                col,
                "load_lora",
                {
                    "lora_name": found or lora.name,
                    "strength_model": lora.weight,
                    "strength_clip": lora.clip_weight,
                },
                title="" if found else f"LoRA not found: {lora.name}",
            )
            if found is None:
                # Bypassed: the graph runs without it, and the node shows what was meant.
                self.wf.set_flags(node, bypass=True)
                self.report.append(f"LoRA {lora.name!r} is bypassed until its file is there")
            self.wf.connect(*model_src, node, "model")
            self.wf.connect(*clip_src, node, "clip")
            model_src, clip_src = (node, "model"), (node, "clip")
        for tag in self.info.other_networks:
            self.report.append(f"{tag} is not supported (only LoRA tags in the prompt); removed")
        return model_src, clip_src

    def embeddings(self, pos: str, neg: str) -> None:
        """Bare embedding names in the prompts become ``embedding:name`` (Text Encode loads
        the file from the embeddings folder), for the files the user has; a name listed in
        ``TI hashes`` without a file stays as words and is reported."""
        files: dict[str, str] = {}
        for name in self.embedding_files:
            written = _strip_ext(name).replace("\\", "/")
            stem = PurePosixPath(written).name
            if stem and not any(c.isspace() or c in ",()[]" for c in written):
                files.setdefault(stem.lower(), written)
        used: set[str] = set()
        for node_id in (pos, neg):
            node = self.wf.get_node(node_id)
            text = str(node.params.get("text", ""))
            for stem, written in files.items():
                pattern = rf"(?<![\w:/-]){re.escape(stem)}(?![\w-])"
                text, n = re.subn(pattern, f"embedding:{written}", text, flags=re.IGNORECASE)
                if n:
                    used.add(stem)
            node.params["text"] = text
        for stem in sorted(used):
            self.explained.append(
                f"embedding {stem!r} is written embedding:{files[stem]} (textual inversion from "
                "the embeddings folder)"
            )
        for name in self.info.embeddings:
            if name.lower() not in files:
                self.report.append(
                    f"embedding {name!r} is not in the embeddings folder; the name stays in the "
                    "prompt as plain words"
                )

    def hires(self, first, size, common, steps, model_src, vae, pos, neg, col) -> str | None:
        p, b, wf = self.info.params, self.b, self.wf
        if not any(
            k in p for k in ("Hires upscale", "Hires resize", "Hires upscaler", "Hires steps")
        ):
            return None
        width, height = size
        factor = self.number("Hires upscale", 2.0, float)
        if not 0 < factor <= MAX_HIRES_FACTOR:
            self.report.append(
                f"Hires upscale: {factor:g} is not a scale Studio can use "
                f"(0 to {MAX_HIRES_FACTOR:g}); 2 is used"
            )
            factor = 2.0
        resize = self.size("Hires resize")
        if resize is not None and min(width, height, *resize) <= 0:
            self.report.append(f"Hires resize {resize[0]}x{resize[1]}: not a size; ignored")
            resize = None
        if resize is not None:
            target = resize
            factor = resize[0] / width
            if abs(resize[1] / height - factor) > 0.01:
                self.report.append(
                    f"Hires resize {resize[0]}x{resize[1]} changes the aspect; Studio scales by "
                    f"{factor:g} (A1111 crops to fit)"
                )
        else:
            target = (int(width * factor) // 8 * 8, int(height * factor) // 8 * 8)
        hires_steps = self.number("Hires steps", 0) or steps
        denoise = self.number("Denoising strength", 0.7, float)
        upscaler = p.get("Hires upscaler", "Latent")
        key = _norm(upscaler)

        def latent_upscale(method: str) -> tuple[str, str]:
            node = b.add(col, "latent_upscale", {"scale_by": factor, "method": method})
            wf.connect(first, "latent", node, "latent")
            return node, "latent"

        def pixels(upscale: tuple[str, str] | None) -> tuple[str, str]:
            decode = b.add(col, "vae_decode")
            wf.connect(first, "latent", decode, "latent")
            wf.connect(*vae, decode, "vae")
            image: tuple[str, str] = (decode, "image")
            if upscale is not None:
                loader = b.add(col, "load_upscale_model", {"model_name": upscale[0]})
                up = b.add(col + 1, "upscale_image")
                wf.connect(loader, "upscale_model", up, "upscale_model")
                wf.connect(*image, up, "image")
                image = (up, "image")
            scale = b.add(
                col + 1,
                "scale_image",
                {
                    "mode": "size",
                    "width": target[0],
                    "height": target[1],
                    "keep_aspect": False,
                    "method": upscale[1] if upscale else "lanczos",
                },
            )
            wf.connect(*image, scale, "image")
            enc = b.add(col + 2, "vae_encode")
            wf.connect(scale, "image", enc, "image")
            wf.connect(*vae, enc, "vae")
            return enc, "latent"

        if key in LATENT_UPSCALERS:
            if "antialiased" in key:
                self.report.append(
                    f"Hires upscaler {upscaler}: Studio's latent upscale has no antialiasing"
                )
            src = latent_upscale(LATENT_UPSCALERS[key])
        elif key in IMAGE_RESIZERS:
            src = pixels(None)
        else:
            found = self.model("upscale_models", upscaler, None, "Hires upscaler")
            if found is None:
                self.report.append("the hires fix upscales the latent (bilinear) instead")
                src = latent_upscale("bilinear")
            else:
                src = pixels((found, "lanczos"))
        total, fraction = hires_schedule(hires_steps, denoise)
        if total > MAX_STEPS:
            self.report.append(
                f"the hires pass would need a {total}-step schedule (more than {MAX_STEPS}); "
                f"it runs {int(hires_steps * denoise)} steps of {hires_steps} instead"
            )
            total, fraction = hires_steps, denoise
        elif total != hires_steps:
            self.explained.append(
                f"A1111's hires pass runs {hires_steps} steps, the last of a {total}-step "
                f"schedule at denoising strength {p.get('Denoising strength', '0.7')}: the "
                f"second Sampler has steps {total} and denoise {fraction:.4f}, which runs the "
                f"same {hires_steps}"
            )
        second_params = {**common, "steps": total, "denoise": fraction}
        if "Hires sampler" in p or "Hires schedule type" in p:
            name = p.get("Hires sampler", p.get("Sampler", "Euler a"))
            sched = p.get("Hires schedule type", p.get("Schedule type"))
            if _norm(name) == "use same sampler":
                name = p.get("Sampler", "Euler a")
            if sched is not None and _norm(sched) == "use same scheduler":
                sched = p.get("Schedule type")
            sampler, scheduler, notes = map_sampler(name, sched)
            self.report.extend(f"Hires sampler: {n}" for n in notes)
            second_params.update(sampler=sampler, scheduler=scheduler)
        second_params["cfg"] = self.number("Hires CFG Scale", common["cfg"], float)
        second = b.add(
            col + 3,
            "sampler",
            second_params,
            title="Sampler (hires pass)",
        )
        set_seed_control(wf, second, "seed", SeedControl.FIXED)
        wf.connect(*model_src, second, "model")
        hr_pos = self.hires_text("Hires prompt", self.info.prompt, col + 2) or pos
        hr_neg = self.hires_text("Hires negative prompt", self.info.negative, col + 2) or neg
        wf.connect(hr_pos, "conditioning", second, "positive")
        wf.connect(hr_neg, "conditioning", second, "negative")
        wf.connect(*src, second, "latent")
        return second

    def hires_text(self, key: str, first_pass: str, col: int) -> str | None:
        """A Text Encode for the hires pass's own prompt, when it has one."""
        raw = self.info.params.get(key, "")
        text = _NETWORK.sub("", raw).strip()
        if text != raw.strip():
            self.report.append(
                f"{key}: LoRA and other <...> tags of the hires pass are not applied"
            )
        if not text or text == first_pass:
            return None
        which = "Hires prompt" if key == "Hires prompt" else "Hires negative prompt"
        self.report.extend(prompt_syntax_problems(text, which))
        node = self.b.add(col, "text_encode", {"text": text, "clip_skip": self.clip_skip}, which)
        self.wf.connect(*self.clip_src, node, "clip")
        return node

    def rng(self) -> None:
        rng = self.info.params.get("RNG")
        studio = self.info.params.get("Version") == "Studio"  # Studio's own images
        if not studio and (rng is None or _norm(rng) != "cpu"):
            self.report.append(
                "A1111 draws its noise on the GPU unless its RNG setting is CPU; Studio draws "
                "it on the CPU, so the image may differ even with the same seed"
            )

    def note(self) -> None:
        version = self.info.params.get("Version")
        lines = [
            f"Imported from A1111/Forge generation parameters: {self.source}"
            + (f" (version {version})" if version else "")
        ]
        shown = {k: v for k, v in self.unused.items() if k != "Version"}
        if shown:
            lines += ["", "Parameters Studio does not use:"]
            lines.extend(f"{k}: {v}" for k, v in shown.items())
        if self.explained:
            lines += ["", "How it maps:"]
            lines.extend(f"- {e}" for e in self.explained)
        if self.report:
            lines += ["", "Differences:"]
            lines.extend(f"- {r}" for r in self.report)
        self.report.extend(f"parameter {k!r} is not used (kept in the note)" for k in shown)
        height = 40.0 + 18.0 * len(lines)
        note = Note(
            id=new_id(),
            text="\n".join(lines),
            pos=(0.0, -height - 60.0),
            size=(560.0, height),
        )
        self.wf.set_notes([note])


def import_infotext(
    text: str,
    registry: Registry,
    *,
    source: str,
    find_model: FindModel | None = None,
    embedding_names: Iterable[str] = (),
) -> ImportResult:
    """A Studio workflow from A1111/Forge generation parameters.

    ``source`` names where the text came from (a file, "clipboard") in errors and in the
    note. ``find_model(kind, name, short_hash)`` gives the name of an installed model file
    or None (see :func:`model_finder`); without it model names are used as written.
    ``embedding_names`` are the textual inversion files the user has (by default those
    ``find_model`` lists, when it is a :class:`ModelFinder`): their bare names in a prompt
    become ``embedding:name``, which Text Encode loads. Raises :class:`WorkflowFileError` when ``text`` is not an infotext.
    """
    info = parse_infotext(text, source=source)
    job = _Import(info, registry, source, find_model, embedding_names)
    wf = job.build()
    return saveable(ImportResult(workflow=wf, kind=KIND, report=job.report), source)


__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "Infotext",
    "Lora",
    "ModelFinder",
    "import_infotext",
    "looks_like_infotext",
    "map_sampler",
    "model_finder",
    "parse_infotext",
]
