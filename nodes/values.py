"""The values that flow between the diffusion nodes (see docs/VALUES.md).

MODEL, CLIP and VAE are small frozen handles: they name where the weights come
from and how to configure them, while the engine's model manager owns the
weights themselves (``ctx.models.get(key, loader)``). A LoRA (a later issue) adds
``(patch, strength)`` entries to ``patches``; patches are applied when the model
is used, never by copying weights, so two branches on one checkpoint stay apart.

No torch at module level: the GUI imports node modules before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

#: Families Studio knows how to condition and sample. ``custom`` is a diffusers
#: model with one CLIP text encoder and a non-standard UNet (the embedded tiny
#: model, test models): it is conditioned like SD1.
FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl", "custom", "sd3", "flux")

#: Where a model's weights live: a diffusers folder, or one file in the original
#: (LDM) key layout.
LAYOUT_DIFFUSERS = "diffusers"
LAYOUT_SINGLE_FILE = "single_file"

#: A handle reports this many bytes to the output cache: the weights are not its.
HANDLE_NBYTES = 512


@dataclass(frozen=True)
class LatentRgb:
    """A model's own latent -> RGB projection for the Sampler's live preview.

    ``rgb = sum_c latent[c] * matrix[c] + bias`` per latent cell gives RGB in **0..1**
    (IMAGE's range), from the latent in the space the UNet sees (the VAE's latent times
    its ``scaling_factor``). One row of three per latent channel. A model that carries
    none gets its family's fixed Stable Diffusion factors.
    """

    matrix: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def from_json(cls, data: Any) -> LatentRgb | None:
        """The factors from ``{"matrix": [[r, g, b], ...], "bias": [r, g, b]}``, or None
        when ``data`` is missing or malformed (the preview then falls back; a broken
        preview entry is no reason to refuse a model)."""
        if not isinstance(data, dict):
            return None
        try:
            matrix = tuple(_rgb(row) for row in data["matrix"])
            bias = _rgb(data.get("bias", (0.0, 0.0, 0.0)))
        except (KeyError, TypeError, ValueError):
            return None
        return cls(matrix, bias) if matrix else None

    def to_json(self) -> dict[str, Any]:
        return {"matrix": [list(r) for r in self.matrix], "bias": list(self.bias)}


def _rgb(values: Any) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    if not all(abs(v) < 1e6 for v in (r, g, b)):  # also refuses nan
        raise ValueError("not a finite number")
    return r, g, b


@dataclass(frozen=True)
class WeightsSource:
    """A model file or folder and the identity it had when it was read.

    ``identity`` is ``ctx.files.identity(path)`` (resolved path, size, mtime): a
    changed file gets a new identity and therefore new model-manager keys.
    ``configs`` holds the diffusers/transformers config of each component
    (``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``, ``scheduler``).
    """

    path: str
    identity: tuple[Any, ...]
    layout: str
    family: str
    configs: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, hash=False)
    #: Key prefixes of the components inside a single file (``unet``: ``model.diffusion_model.``).
    prefixes: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    #: The checkpoint's name as the user chose it (for the PNG's parameters text).
    name: str = ""
    #: The model's own latent -> RGB preview factors, when its files carry them.
    latent_rgb: LatentRgb | None = field(default=None, compare=False, hash=False)
    #: A merge of two sources (``nodes.merge``): (operation, first, second, params,
    #: merged components); its ``identity`` names all of them.
    merge: tuple[Any, ...] | None = field(default=None, compare=False, hash=False)

    def key(self, component: str, dtype: Any, device: str) -> tuple[Any, ...]:
        """The model-manager key of one component of these weights."""
        return (self.identity, component, str(dtype), device)


@dataclass(frozen=True)
class SkipLayerGuidance:
    """Skip Layer Guidance on a diffusion transformer (ComfyUI's SkipLayerGuidanceDiT /
    SD3): between the noise levels of ``start`` and ``end`` (fractions of the model's
    time), the guided prediction moves by ``scale`` times the positive prompt's prediction
    minus the same prediction with these blocks skipped."""

    double: tuple[int, ...]
    single: tuple[int, ...]
    scale: float
    start: float
    end: float
    #: ComfyUI's rescaling_scale: 0 off; else the result's spread pulled towards the
    #: positive prediction's.
    rescale: float = 0.0


@dataclass(frozen=True)
class ModelHandle:
    """MODEL: the denoising UNet of a checkpoint, with its sampling configuration."""

    source: WeightsSource
    family: str
    #: The checkpoint's scheduler config (diffusers ``scheduler_config.json``).
    scheduler_config: dict[str, Any] = field(compare=False, hash=False, default_factory=dict)
    prediction_type: str = "epsilon"
    patches: tuple[tuple[Any, float], ...] = ()
    #: The live preview's latent -> RGB factors; None: the family's fixed SD factors.
    latent_rgb: LatentRgb | None = field(default=None, compare=False, hash=False)
    #: Differential Diffusion's strength (the node of that name); None: off.
    differential_diffusion: float | None = None
    #: Skip Layer Guidance (the node of that name; diffusion transformers); None: off.
    skip_layer_guidance: SkipLayerGuidance | None = None
    #: Rescale CFG's multiplier (the node of that name; SD models); None: off.
    rescale_cfg: float | None = None
    #: CFG-Zero* (the node CFGZeroStar): the negative prediction scaled by its optimal
    #: factor before guidance.
    cfg_zero_star: bool = False
    #: Perp-Neg (the node of that name): the empty prompt's conditioning and the negative
    #: scale; None: off.
    perp_neg: tuple[Any, float] | None = field(default=None, compare=False, hash=False)
    #: Perturbed-Attention Guidance's scale (the node of that name; SD models); None: off.
    pag: float | None = None
    #: FreeU (the FreeU / FreeU V2 nodes; SD models): b1, b2, s1, s2 and "v1" or "v2";
    #: None: off.
    freeu: tuple[float, float, float, float, str] | None = None
    #: Apply IP-Adapter's adapters with their reference embeddings and weights
    #: (``nodes.ipadapter_nodes.IPAdapterUse``; SD models), in the order applied.
    ip_adapters: tuple[Any, ...] = field(default=(), compare=False, hash=False)

    @property
    def unet_config(self) -> dict[str, Any]:
        return self.source.configs.get("unet", {})

    @property
    def vae_downscale(self) -> int:
        """Pixels per latent cell of the checkpoint's own VAE (8 for Stable Diffusion)."""
        blocks = self.source.configs.get("vae", {}).get("block_out_channels")
        return 2 ** (len(blocks) - 1) if blocks else 8

    def with_patch(self, patch: Any, strength: float) -> ModelHandle:
        return replace(self, patches=(*self.patches, (patch, strength)))

    def __studio_nbytes__(self) -> int:
        return HANDLE_NBYTES


@dataclass(frozen=True)
class ClipHandle:
    """CLIP: the text encoder(s) and tokenizer(s) of a checkpoint.

    ``encoders`` names the components in order (``("text_encoder",)`` for SD1/SD2,
    ``("text_encoder", "text_encoder_2")`` for SDXL). ``tokenizers`` gives, for
    each, a folder holding a CLIP tokenizer (or a single-file checkpoint that carries its
    own in its metadata) and the pad token to use.
    """

    source: WeightsSource
    family: str
    encoders: tuple[str, ...]
    tokenizers: tuple[tuple[str, str | None], ...]
    patches: tuple[tuple[Any, float], ...] = ()
    #: SD3 / Flux (``nodes.dit``): per encoder, ``(role, source, component)`` where role is
    #: ``clip_l``, ``clip_g`` or ``t5``; the encoders may come from separate files.
    parts: tuple[tuple[str, Any, str], ...] = ()

    @property
    def is_sdxl(self) -> bool:
        return len(self.encoders) == 2

    def with_patch(self, patch: Any, strength: float) -> ClipHandle:
        return replace(self, patches=(*self.patches, (patch, strength)))

    def __studio_nbytes__(self) -> int:
        return HANDLE_NBYTES


@dataclass(frozen=True)
class VaeHandle:
    """VAE: the autoencoder between pixels and latents.

    ``scaling_factor`` (and ``shift_factor``) turn the VAE's own latents into the
    space the UNet sees: ``unet_latent = (vae_latent - shift) * scale``.
    """

    source: WeightsSource
    component: str = "vae"
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    patches: tuple[tuple[Any, float], ...] = ()

    @property
    def config(self) -> dict[str, Any]:
        return self.source.configs.get(self.component, {})

    @property
    def downscale(self) -> int:
        """Pixels per latent cell (8 for every Stable Diffusion VAE)."""
        return 2 ** (len(self.config.get("block_out_channels", (0, 0, 0, 0))) - 1)

    def __studio_nbytes__(self) -> int:
        return HANDLE_NBYTES


#: Where InstructPixToPix Conditioning puts the control image on a prompt (``Cond.extra``):
#: the VAE-encoded image's latent distribution ``{"mean", "std"}``, scaled as latents are,
#: for FLUX.1 Canny / Depth [dev].
CONTROL_IMAGE_KEY = "control_image_latent"


@dataclass(frozen=True)
class Cond:
    """One entry of a CONDITIONING list: a prompt's embeddings.

    ``embeds`` is a float32 CPU tensor [1, tokens, width] (tokens is 77 times the
    number of 75-token chunks); ``pooled`` the SDXL pooled embedding [1, width] or
    None. ``size`` is SDXL's (original height, width, crop top, crop left, target
    height, width) or None to take them from the latent at sampling time.
    ``extra`` leaves room for other conditioning (ControlNet entries, areas).
    """

    embeds: Any
    pooled: Any = None
    family: str = ""
    text: str = ""
    size: tuple[int, int, int, int, int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __studio_nbytes__(self) -> int:
        n = 256
        for t in (self.embeds, self.pooled):
            if t is not None:
                n += int(t.element_size() * t.nelement())
        return n


def conditioning_text(cond: list[Cond] | None) -> str:
    """The prompt text of a CONDITIONING value (for the PNG's parameters text)."""
    if not cond:
        return ""
    return " ".join(c.text for c in cond if c.text)


#: Sampler names (ComfyUI's) -> diffusers scheduler class and the config values that make
#: it that sampler; an empty class name: ComfyUI's sampler only (with a comfy_* schedule).
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_3m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
    ),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    # ComfyUI's samplers that diffusers lacks: only with the comfy_* schedules
    "dpmpp_2s_ancestral": ("", {}),
    "uni_pc_bh2": ("", {}),
    "ipndm": ("", {}),
}

#: Scheduler (sigma schedule) names -> config values; ``normal`` keeps the
#: checkpoint's own scheduler config. A schedule a sampler's diffusers class does
#: not offer is refused with a clear error.
SCHEDULERS: dict[str, dict[str, Any]] = {
    "normal": {},
    # ComfyUI's simple: evenly spaced from the top of the schedule (for flow-matching
    # models, nodes/dit.py: evenly spaced in time, then shifted).
    "simple": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
}

#: ComfyUI's own schedules (``comfy_<ComfyUI name>``): ComfyUI's sigmas and noise, computed
#: by nodes/ksampling.py (not diffusers), so an imported ComfyUI workflow gives ComfyUI's
#: picture for the same seed. Studio's ``normal`` stays the checkpoint's diffusers spacing.
COMFY_SCHEDULES: dict[str, str] = {
    "comfy_normal": "normal",
    "comfy_karras": "karras",
    "comfy_exponential": "exponential",
    "comfy_simple": "simple",
    "comfy_sgm_uniform": "sgm_uniform",
    "comfy_ddim_uniform": "ddim_uniform",
    "comfy_kl_optimal": "kl_optimal",
    "comfy_beta": "beta",
    "comfy_linear_quadratic": "linear_quadratic",
    # ComfyUI's SDTurboScheduler node (not a KSampler choice there): SD Turbo's timesteps
    "comfy_sd_turbo": "sd_turbo",
}
#: The samplers the ComfyUI schedules run with (ComfyUI's k-diffusion steps, written in
#: nodes/ksamplers.py; a test keeps the two lists equal).
COMFY_SAMPLERS = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "ddim",
    "ddpm",
    "uni_pc",
    "uni_pc_bh2",
    "lcm",
    "ipndm",
)
SCHEDULERS.update({name: {"comfy": base} for name, base in COMFY_SCHEDULES.items()})
