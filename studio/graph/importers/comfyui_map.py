"""The table between ComfyUI's core node types and Studio's, both ways.

Each :class:`NodeMap` says, for one ComfyUI class_type, which Studio node type it is,
the order of its ``widgets_values`` (the UI format stores widget values by position),
which ComfyUI widget and input names are which Studio params and ports, and what the
output slots are called in Studio. docs/importing.md is written from this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Widgets that ComfyUI's frontend follows with a hidden "control after generate" value.
SEED_WIDGETS = frozenset({"seed", "noise_seed"})

#: Frontend-only node types: they compute nothing and are turned into layout or values.
FRONTEND_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})

#: Placeholder type ids of imported nodes Studio cannot run start with this.
PLACEHOLDER_PREFIX = "comfyui."

#: ComfyUI's schedules -> Studio's ``comfy_*`` schedules, which compute ComfyUI's sigmas and
#: noise (nodes/ksampling.py): the same seed gives ComfyUI's picture.
COMFY_SCHEDULES = {
    name: f"comfy_{name}"
    for name in (
        "normal",
        "karras",
        "exponential",
        "simple",
        "sgm_uniform",
        "ddim_uniform",
        "kl_optimal",
        "beta",
        "linear_quadratic",
        # not a KSampler choice in ComfyUI: what its SDTurboScheduler node folds into
        "sd_turbo",
    )
}
#: The samplers the ``comfy_*`` schedules run with (nodes.values.COMFY_SAMPLERS; a test
#: keeps the two equal: studio/graph does not import the node modules).
COMFY_EXACT_SAMPLERS = (
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
#: ComfyUI samplers Studio has only as ComfyUI's (no diffusers scheduler): they need a
#: ``comfy_*`` schedule.
COMFY_ONLY_SAMPLERS = frozenset({"dpmpp_2s_ancestral", "uni_pc_bh2", "ipndm"})
#: With another sampler, the Studio (diffusers) schedule nearest to ComfyUI's.
SCHEDULE_FALLBACK = {
    "comfy_normal": "normal",
    "comfy_karras": "karras",
    "comfy_exponential": "exponential",
    "comfy_sgm_uniform": "sgm_uniform",
    "comfy_simple": "normal",
    "comfy_ddim_uniform": "normal",
    "comfy_kl_optimal": "normal",
    "comfy_beta": "beta",
    "comfy_linear_quadratic": "normal",
    "comfy_sd_turbo": "normal",
}
#: Studio node types whose (sampler, scheduler) params are checked against the above.
SAMPLER_TYPES = frozenset({"sampler", "sampler_advanced"})


def sampler_schedule(sampler: Any, scheduler: Any) -> tuple[Any, str | None]:
    """The Studio schedule an imported (sampler, ``comfy_*`` schedule) pair runs with, and the
    report line when it is not ComfyUI's own (Studio reproduces ComfyUI's sampling for the
    samplers of COMFY_EXACT_SAMPLERS)."""
    # Values come from the file: anything (a list, a dict) that is not a name passes through
    # untouched, for the param check to report as a wrong value.
    if not isinstance(scheduler, str):
        return scheduler, None
    if scheduler not in SCHEDULE_FALLBACK:
        if isinstance(sampler, str) and sampler in COMFY_ONLY_SAMPLERS:
            return scheduler, (
                f"sampler {sampler!r} runs in Studio only with ComfyUI's schedules (comfy_*), "
                f"which have no {scheduler!r}: choose one of them (comfy_normal, "
                "comfy_karras, ...) before running"
            )
        return scheduler, None
    if isinstance(sampler, str) and sampler in COMFY_EXACT_SAMPLERS:
        return scheduler, None
    near = SCHEDULE_FALLBACK[scheduler]
    return near, (
        f"schedule {scheduler.removeprefix('comfy_')!r} with sampler {sampler!r} became "
        f"Studio's {near!r} (diffusers): Studio reproduces ComfyUI's sampling only for "
        f"{', '.join(COMFY_EXACT_SAMPLERS)}, so the image differs from ComfyUI's"
    )


def sampled_latent_sizes(wf: Any, node_id: str) -> set[tuple[int, int] | None]:
    """The pixel sizes (width, height) of the latents that the Samplers fed (through any
    nodes) by ``node_id`` sample; None for a latent whose size is known only when run (one
    not straight from Empty Latent Image)."""
    sizes: set[tuple[int, int] | None] = set()
    seen, todo = {node_id}, [node_id]
    while todo:
        for lk in wf.links_from(todo.pop()):
            target = wf.get_node(lk.target)
            if target.type in SAMPLER_TYPES:
                src = wf.link_into(target.id, "latent")
                n = wf.get_node(src.source) if src is not None else None
                if n is not None and n.type == "empty_latent":
                    spec = wf.spec_of(n)
                    w = n.params.get("width", spec.input("width").default if spec else None)
                    h = n.params.get("height", spec.input("height").default if spec else None)
                    sizes.add((w, h))
                else:
                    sizes.add(None)
            elif target.id not in seen:
                seen.add(target.id)
                todo.append(target.id)
    return sizes


@dataclass(frozen=True)
class NodeMap:
    """How one ComfyUI class_type maps onto one Studio node type."""

    studio: str
    #: ComfyUI's title for the type (``_meta.title`` in the API format).
    comfy_title: str
    #: ComfyUI widget names, in ``widgets_values`` order (seed controls not counted).
    widgets: tuple[str, ...] = ()
    #: ComfyUI widget name -> Studio param name, where they differ.
    params: dict[str, str] = field(default_factory=dict)
    #: ComfyUI input name -> Studio input name, where they differ.
    inputs: dict[str, str] = field(default_factory=dict)
    #: Studio output name of each ComfyUI output slot, in slot order.
    outputs: tuple[str, ...] = ()
    #: Studio params this mapping sets whatever the file says.
    fixed: dict[str, Any] = field(default_factory=dict)
    #: Per ComfyUI widget: ComfyUI value -> Studio value, where they differ.
    values: dict[str, dict[Any, Any]] = field(default_factory=dict)
    #: (ComfyUI widget, ComfyUI value) -> the report line that value gets.
    notes: dict[tuple[str, Any], str] = field(default_factory=dict)
    #: ComfyUI widgets Studio has no param for: name -> (the value Studio behaves as,
    #: what a different value would lose).
    unsupported: dict[str, tuple[Any, str]] = field(default_factory=dict)
    #: ComfyUI inputs Studio has no port for: name -> what a link into it loses.
    dropped_inputs: dict[str, str] = field(default_factory=dict)
    #: ComfyUI widgets (width, height) that Studio takes from the size of the latent the
    #: node's model samples: no report when they equal it, an export writes it.
    latent_size: tuple[str, ...] = ()
    #: A report line every imported node of this type gets.
    always: str = ""
    #: Frontend-only values that may follow the widgets (Load Image's upload button).
    trailing: int = 0
    #: Studio params that need not be at their default for an export (ComfyUI decides them).
    export_free: tuple[str, ...] = ()
    #: Studio param -> values ComfyUI does not have (an export refuses them).
    comfy_lacks: dict[str, frozenset[Any]] = field(default_factory=dict)
    #: Widget counts of older ComfyUI versions of the type: their values are the leading
    #: widgets, the others keep Studio's defaults (which are what those versions did).
    older: tuple[int, ...] = ()

    def studio_input(self, comfy_name: str) -> str:
        """The Studio input or param a ComfyUI input or widget name is."""
        return self.inputs.get(comfy_name) or self.params.get(comfy_name) or comfy_name

    def comfy_input(self, studio_name: str) -> str:
        for table in (self.inputs, self.params):
            for comfy, studio in table.items():
                if studio == studio_name:
                    return comfy
        return studio_name


_IMAGE_METHODS = {"nearest-exact": "nearest"}
#: ComfyUI's samplers that draw their SDE noise on the GPU; Studio draws noise on the CPU.
_GPU_SAMPLERS = {
    "dpmpp_sde_gpu": "dpmpp_sde",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "dpmpp_3m_sde_gpu": "dpmpp_3m_sde",
}
_GPU_NOTE = "sampler {!r} became {!r}: Studio draws noise on the CPU, so the image differs"
_ENABLE = {"enable": True, "disable": False}
_NEAREST_NOTE = "'nearest-exact' scaling became Studio's 'nearest' (pixels may differ slightly)"

#: ComfyUI's union type numbers (comfy/cldm/control_types.py: xinsir's SDXL union's), which
#: ComfyUI also hands to Flux union ControlNets; Studio gives those InstantX's mode for the
#: type (nodes.controlnet.FLUX_UNION_MODES, kept equal by a test).
_COMFY_UNION_NUMBERS = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}
_FLUX_UNION_MODES = {
    "canny/lineart/anime_lineart/mlsd": 0,
    "tile": 1,
    "depth": 2,
    "openpose": 4,
}


def _union_note(kind: str) -> str:
    ours = _FLUX_UNION_MODES.get(kind)
    theirs = _COMFY_UNION_NUMBERS[kind]
    if ours is None:
        return (
            f"union type {kind!r}: Flux union ControlNets have no mode for it in Studio (an "
            f"error on the Sampler with one; ComfyUI hands them its number {theirs})"
        )
    return (
        f"union type {kind!r}: a Flux union ControlNet gets its {kind.split('/')[0]} mode "
        f"({ours}, InstantX's numbering) in Studio, where ComfyUI hands it its number {theirs}, "
        "so with a Flux union model the picture differs from ComfyUI's"
    )


#: The importer's names for a folded custom-sampling chain (a Sampler, or a Sampler
#: (Advanced) when it adds no noise).
SAMPLER_CUSTOM_KSAMPLER = "studio:SamplerCustom>KSampler"
SAMPLER_CUSTOM_ADVANCED = "studio:SamplerCustom>KSamplerAdvanced"
#: A sampler fed one part of split sigmas (SplitSigmas): Sampler (Advanced)'s start and end.
SAMPLER_CUSTOM_SPLIT = "studio:SamplerCustom>KSamplerAdvanced(split)"

#: ComfyUI's custom-sampling nodes, with their widgets in ``widgets_values`` order: folded
#: into one Sampler where the chain collapses (the importer's fold_custom_sampling).
CUSTOM_SAMPLING: dict[str, tuple[str, ...]] = {
    "SamplerCustomAdvanced": (),
    "SamplerCustom": ("add_noise", "noise_seed", "cfg"),
    "RandomNoise": ("noise_seed",),
    "DisableNoise": (),
    "BasicGuider": (),
    "CFGGuider": ("cfg",),
    "PerpNegGuider": ("cfg", "neg_scale"),
    "KSamplerSelect": ("sampler_name",),
    "BasicScheduler": ("scheduler", "steps", "denoise"),
    # Samplers with their options: folded where the options are the KSampler's own.
    "SamplerEulerAncestral": ("eta", "s_noise"),
    "SamplerDPMPP_2S_Ancestral": ("eta", "s_noise"),
    "SamplerDPMPP_SDE": ("eta", "s_noise", "r", "noise_device"),
    "SamplerDPMPP_2M_SDE": ("solver_type", "eta", "s_noise", "noise_device"),
    "SamplerDPMPP_3M_SDE": ("eta", "s_noise", "noise_device"),
    "SamplerLMS": ("order",),
    # Schedulers: folded where they equal one of the Sampler's schedules.
    "KarrasScheduler": ("steps", "sigma_max", "sigma_min", "rho"),
    "ExponentialScheduler": ("steps", "sigma_max", "sigma_min"),
    "PolyexponentialScheduler": ("steps", "sigma_max", "sigma_min", "rho"),
    "BetaSamplingScheduler": ("steps", "alpha", "beta"),
    "SDTurboScheduler": ("steps", "denoise"),
    # Two passes over one schedule: Sampler (Advanced)'s start and end steps.
    "SplitSigmas": ("step",),
    "SplitSigmasDenoise": ("denoise",),
}

#: Prompt nodes with a text per encoder: Studio's Text Encode takes one text for all
#: (the importer's split_prompt_nodes); widgets in ``widgets_values`` order.
MULTI_TEXT_ENCODES: dict[str, tuple[str, ...]] = {
    "CLIPTextEncodeFlux": ("clip_l", "t5xxl", "guidance"),
    "CLIPTextEncodeSD3": ("clip_l", "clip_g", "t5xxl", "empty_padding"),
}

#: Types from ComfyUI extensions that map (city96's ComfyUI-GGUF loaders, cubiq's
#: ComfyUI_IPAdapter_plus model loader and advanced apply node).
EXTENSION_TYPES = frozenset(
    {
        "UnetLoaderGGUF",
        "DualCLIPLoaderGGUF",
        "TripleCLIPLoaderGGUF",
        "IPAdapterModelLoader",
        "IPAdapterAdvanced",
    }
)

#: ComfyUI's Load Image (as Mask): imported as two Studio nodes.
LOAD_IMAGE_MASK = "LoadImageMask"


def _tiled_vae(
    studio: str,
    title: str,
    feed: tuple[str, str],
    output: str,
    verb: str,
    what: str,
    passes: str,
) -> NodeMap:
    """VAEDecodeTiled / VAEEncodeTiled: Studio's VAE node in tiled mode with the tile size
    (``feed``: ComfyUI's input and Studio's; ``what`` differs at the seams)."""
    return NodeMap(
        studio,
        title,
        ("tile_size", "overlap"),
        inputs={feed[0]: feed[1]},
        outputs=(output,),
        fixed={"tiled": True},
        unsupported={
            "overlap": (64, ""),
            "temporal_size": (64, ""),
            "temporal_overlap": (8, ""),
        },
        trailing=2,  # newer ComfyUI's temporal_size and temporal_overlap (video VAEs)
        always=f"became VAE {verb} in tiled mode with its tile size; the tiles' overlap "
        "(a quarter of a tile, blended once, diffusers') is Studio's own, not the file's "
        f"overlap ({passes}), so {what} at tile seams may differ slightly; temporal size "
        "and overlap concern video VAEs only",
    )


def _folded_sampler(studio: str, widgets: tuple[str, ...]) -> NodeMap:
    """What a folded custom-sampling chain maps as (its values under KSampler's names)."""
    return NodeMap(
        studio,
        "SamplerCustomAdvanced",
        widgets,
        params={"sampler_name": "sampler"},
        inputs={"latent_image": "latent"},
        outputs=("latent", "latent"),
        values={"sampler_name": _GPU_SAMPLERS, "scheduler": COMFY_SCHEDULES},
        notes={("sampler_name", k): _GPU_NOTE.format(k, v) for k, v in _GPU_SAMPLERS.items()},
    )


NODE_MAPS: dict[str, NodeMap] = {
    "CheckpointLoaderSimple": NodeMap(
        "load_checkpoint", "Load Checkpoint", ("ckpt_name",), outputs=("model", "clip", "vae")
    ),
    # the deprecated loader with a model config (.yaml): Studio reads the family from the
    # file's tensors, so the config is not needed
    "CheckpointLoader": NodeMap(
        "load_checkpoint",
        "Load Checkpoint With Config (DEPRECATED)",
        ("config_name", "ckpt_name"),
        outputs=("model", "clip", "vae"),
        unsupported={"config_name": ("", "")},
        always="became Load Checkpoint: its config file is not read, Studio takes the "
        "model's family and settings from the checkpoint's own tensors",
    ),
    "CLIPTextEncode": NodeMap(
        "text_encode", "CLIP Text Encode (Prompt)", ("text",), outputs=("conditioning",)
    ),
    "CLIPTextEncodeSDXL": NodeMap(
        "text_encode_sdxl",
        "CLIPTextEncodeSDXL",
        (
            "width",
            "height",
            "crop_w",
            "crop_h",
            "target_width",
            "target_height",
            "text_g",
            "text_l",
        ),
        outputs=("conditioning",),
    ),
    "EmptyLatentImage": NodeMap(
        "empty_latent", "Empty Latent Image", ("width", "height", "batch_size"), outputs=("latent",)
    ),
    "KSampler": NodeMap(
        "sampler",
        "KSampler",
        ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
        params={"sampler_name": "sampler"},
        inputs={"latent_image": "latent"},
        outputs=("latent",),
        values={"sampler_name": _GPU_SAMPLERS, "scheduler": COMFY_SCHEDULES},
        notes={
            **{("sampler_name", k): _GPU_NOTE.format(k, v) for k, v in _GPU_SAMPLERS.items()},
        },
        comfy_lacks={"sampler": frozenset({"pndm"})},
    ),
    "VAEDecode": NodeMap(
        "vae_decode",
        "VAE Decode",
        inputs={"samples": "latent"},
        outputs=("image",),
        export_free=("tile_size",),  # unused when not tiled (tiled exports as VAEDecodeTiled)
    ),
    "VAEEncode": NodeMap(
        "vae_encode",
        "VAE Encode",
        inputs={"pixels": "image"},
        outputs=("latent",),
        export_free=("tile_size",),  # unused when not tiled (tiled exports as VAEEncodeTiled)
    ),
    "SaveImage": NodeMap("save_image", "Save Image", ("filename_prefix",)),
    "PreviewImage": NodeMap("preview_image", "Preview Image"),
    "LoadImage": NodeMap(
        "load_image", "Load Image", ("image",), outputs=("image", "mask"), trailing=1
    ),
    # ComfyUI's "Load Image (from Outputs)": its names carry " [output]", which Load Image
    # reads from the output folder.
    "LoadImageOutput": NodeMap(
        "load_image",
        "Load Image (from Outputs)",
        ("image",),
        outputs=("image", "mask"),
        trailing=2,
    ),
    "LoraLoader": NodeMap(
        "load_lora",
        "Load LoRA",
        ("lora_name", "strength_model", "strength_clip"),
        outputs=("model", "clip"),
    ),
    # Diffusion transformers (SD3.5, Flux.1): nodes/dit_nodes.py.
    "UNETLoader": NodeMap(
        "load_diffusion_model",
        "Load Diffusion Model",
        ("unet_name", "weight_dtype"),
        outputs=("model",),
        values={"weight_dtype": {"fp8_e4m3fn_fast": "fp8_e4m3fn", "fp8_e5m2": "fp8_e4m3fn"}},
        notes={
            ("weight_dtype", "fp8_e4m3fn_fast"): "weight dtype 'fp8_e4m3fn_fast' became "
            "'fp8_e4m3fn' (each layer computed in the device's type)",
            ("weight_dtype", "fp8_e5m2"): "weight dtype 'fp8_e5m2' became 'fp8_e4m3fn'",
        },
    ),
    "DualCLIPLoader": NodeMap(
        "load_text_encoders",
        "DualCLIPLoader",
        ("clip_name1", "clip_name2", "type"),
        outputs=("clip",),
        trailing=1,
    ),
    "TripleCLIPLoader": NodeMap(
        "load_text_encoders_3",
        "TripleCLIPLoader",
        ("clip_name1", "clip_name2", "clip_name3"),
        outputs=("clip",),
    ),
    "FluxGuidance": NodeMap(
        "flux_guidance", "FluxGuidance", ("guidance",), outputs=("conditioning",)
    ),
    "ModelSamplingSD3": NodeMap(
        "model_sampling_sd3", "ModelSamplingSD3", ("shift",), outputs=("model",)
    ),
    "EmptySD3LatentImage": NodeMap(
        "empty_latent",
        "EmptySD3LatentImage",
        ("width", "height", "batch_size"),
        outputs=("latent",),
    ),
    "VAELoader": NodeMap(
        "load_vae", "Load VAE", ("vae_name",), outputs=("vae",), export_free=("latent_scale",)
    ),
    "ControlNetLoader": NodeMap(
        "load_controlnet", "Load ControlNet Model", ("control_net_name",), outputs=("control_net",)
    ),
    "SetUnionControlNetType": NodeMap(
        "set_union_controlnet_type",
        "SetUnionControlNetType",
        ("type",),
        outputs=("control_net",),
        comfy_lacks={"type": frozenset({"blur", "gray", "low quality"})},
        notes={("type", t): _union_note(t) for t in _COMFY_UNION_NUMBERS},
    ),
    "ControlNetApplyAdvanced": NodeMap(
        "apply_controlnet",
        "Apply ControlNet",
        ("strength", "start_percent", "end_percent"),
        outputs=("positive", "negative"),
    ),
    # "Apply Controlnet with VAE", SD3.5's ControlNet examples (deprecated since for
    # ControlNetApplyAdvanced, whose vae input it always had)
    "ControlNetApplySD3": NodeMap(
        "apply_controlnet",
        "Apply Controlnet with VAE",
        ("strength", "start_percent", "end_percent"),
        outputs=("positive", "negative"),
    ),
    "UpscaleModelLoader": NodeMap(
        "load_upscale_model", "Load Upscale Model", ("model_name",), outputs=("upscale_model",)
    ),
    "ImageUpscaleWithModel": NodeMap(
        "upscale_image",
        "Upscale Image (using Model)",
        outputs=("image",),
        export_free=("tile_size", "overlap"),
    ),
    "LatentUpscaleBy": NodeMap(
        "latent_upscale",
        "Upscale Latent By",
        ("upscale_method", "scale_by"),
        params={"upscale_method": "method"},
        inputs={"samples": "latent"},
        outputs=("latent",),
    ),
    "ImageScale": NodeMap(
        "scale_image",
        "Upscale Image",
        ("upscale_method", "width", "height", "crop"),
        params={"upscale_method": "method"},
        outputs=("image",),
        fixed={"mode": "size", "keep_aspect": False},
        values={"upscale_method": _IMAGE_METHODS},
        notes={("upscale_method", "nearest-exact"): _NEAREST_NOTE},
        unsupported={
            "crop": (
                "disabled",
                "'crop: center' was dropped: Studio's Scale Image stretches to "
                "the size instead of cropping",
            )
        },
        export_free=("factor",),
    ),
    "ImageScaleBy": NodeMap(
        "scale_image",
        "Upscale Image By",
        ("upscale_method", "scale_by"),
        params={"upscale_method": "method", "scale_by": "factor"},
        outputs=("image",),
        fixed={"mode": "factor"},
        values={"upscale_method": _IMAGE_METHODS},
        notes={("upscale_method", "nearest-exact"): _NEAREST_NOTE},
        export_free=("width", "height", "keep_aspect"),
    ),
    "VAEEncodeForInpaint": NodeMap(
        "vae_encode_inpaint", "VAE Encode (for Inpainting)", ("grow_mask_by",), outputs=("latent",)
    ),
    "InpaintModelConditioning": NodeMap(
        "inpaint_model_conditioning",
        "InpaintModelConditioning",
        ("noise_mask",),
        outputs=("positive", "negative", "latent"),
    ),
    "InstructPixToPixConditioning": NodeMap(
        "instruct_pix2pix_conditioning",
        "InstructPixToPixConditioning",
        outputs=("positive", "negative", "latent"),
    ),
    "SetLatentNoiseMask": NodeMap(
        "set_latent_noise_mask",
        "Set Latent Noise Mask",
        inputs={"samples": "latent"},
        outputs=("latent",),
    ),
    "InvertMask": NodeMap("invert_mask", "InvertMask", outputs=("mask",)),
    "ImageToMask": NodeMap(
        "mask_from_image", "Convert Image to Mask", ("channel",), outputs=("mask",)
    ),
    "SolidMask": NodeMap(
        "solid_mask", "SolidMask", ("value", "width", "height"), outputs=("mask",)
    ),
    "KSamplerAdvanced": NodeMap(
        "sampler_advanced",
        "KSampler (Advanced)",
        (
            "add_noise",
            "noise_seed",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "start_at_step",
            "end_at_step",
            "return_with_leftover_noise",
        ),
        params={"noise_seed": "seed", "sampler_name": "sampler"},
        inputs={"latent_image": "latent"},
        outputs=("latent",),
        values={
            "add_noise": _ENABLE,
            "return_with_leftover_noise": _ENABLE,
            "sampler_name": _GPU_SAMPLERS,
            "scheduler": COMFY_SCHEDULES,
        },
        notes={
            **{("sampler_name", k): _GPU_NOTE.format(k, v) for k, v in _GPU_SAMPLERS.items()},
        },
        comfy_lacks={"sampler": frozenset({"pndm"})},
    ),
    "ConditioningZeroOut": NodeMap(
        "conditioning_zero_out", "ConditioningZeroOut", outputs=("conditioning",)
    ),
    "ConditioningCombine": NodeMap(
        "conditioning_combine", "Conditioning (Combine)", outputs=("conditioning",)
    ),
    "ConditioningConcat": NodeMap(
        "conditioning_concat", "Conditioning (Concat)", outputs=("conditioning",)
    ),
    "ConditioningAverage": NodeMap(
        "conditioning_average",
        "ConditioningAverage",
        ("conditioning_to_strength",),
        outputs=("conditioning",),
    ),
    "ConditioningSetMask": NodeMap(
        "conditioning_set_mask",
        "Conditioning (Set Mask)",
        ("strength", "set_cond_area"),
        outputs=("conditioning",),
    ),
    "ImagePadForOutpaint": NodeMap(
        "pad_for_outpaint",
        "Pad Image for Outpainting",
        ("left", "top", "right", "bottom", "feathering"),
        outputs=("image", "mask"),
    ),
    "SkipLayerGuidanceDiT": NodeMap(
        "skip_layer_guidance",
        "SkipLayerGuidanceDiT",
        (
            "double_layers",
            "single_layers",
            "scale",
            "start_percent",
            "end_percent",
            "rescaling_scale",
        ),
        outputs=("model",),
    ),
    "SkipLayerGuidanceSD3": NodeMap(
        "skip_layer_guidance",
        "SkipLayerGuidanceSD3",
        ("layers", "scale", "start_percent", "end_percent"),
        params={"layers": "double_layers"},
        outputs=("model",),
        fixed={"single_layers": "", "rescaling_scale": 0.0},
    ),
    "PerpNeg": NodeMap(
        "perp_neg", "Perp-Neg (DEPRECATED by PerpNegGuider)", ("neg_scale",), outputs=("model",)
    ),
    "CFGZeroStar": NodeMap("cfg_zero_star", "CFGZeroStar", outputs=("model",)),
    "RescaleCFG": NodeMap("rescale_cfg", "RescaleCFG", ("multiplier",), outputs=("model",)),
    "ModelSamplingDiscrete": NodeMap(
        "model_sampling_discrete", "ModelSamplingDiscrete", ("sampling", "zsnr"), outputs=("model",)
    ),
    "ImageBatch": NodeMap("image_batch", "Batch Images", outputs=("image",)),
    "EmptyImage": NodeMap(
        "empty_image", "EmptyImage", ("width", "height", "batch_size", "color"), outputs=("image",)
    ),
    "ImageFromBatch": NodeMap(
        "image_from_batch", "Image From Batch", ("batch_index", "length"), outputs=("image",)
    ),
    "RepeatImageBatch": NodeMap(
        "repeat_image_batch", "Repeat Image Batch", ("amount",), outputs=("image",)
    ),
    "LatentBatch": NodeMap(
        "latent_batch",
        "Latent Batch",
        inputs={"samples1": "latent1", "samples2": "latent2"},
        outputs=("latent",),
    ),
    "LatentBlend": NodeMap(
        "latent_blend",
        "Latent Blend",
        ("blend_factor",),
        inputs={"samples1": "latent1", "samples2": "latent2"},
        outputs=("latent",),
        unsupported={"blend_mode": ("normal", "")},
    ),
    "LatentFromBatch": NodeMap(
        "latent_from_batch",
        "Latent From Batch",
        ("batch_index", "length"),
        inputs={"samples": "latent"},
        outputs=("latent",),
    ),
    "RepeatLatentBatch": NodeMap(
        "repeat_latent_batch",
        "Repeat Latent Batch",
        ("amount",),
        inputs={"samples": "latent"},
        outputs=("latent",),
    ),
    "LatentUpscale": NodeMap(
        "latent_upscale_to",
        "Upscale Latent",
        ("upscale_method", "width", "height", "crop"),
        params={"upscale_method": "method"},
        inputs={"samples": "latent"},
        outputs=("latent",),
    ),
    "LoraLoaderModelOnly": NodeMap(
        "load_lora_model_only",
        "LoraLoaderModelOnly",
        ("lora_name", "strength_model"),
        outputs=("model",),
    ),
    "ControlNetApply": NodeMap(
        "apply_controlnet_one",
        "Apply ControlNet (OLD)",
        ("strength",),
        outputs=("conditioning",),
    ),
    "ConditioningSetArea": NodeMap(
        "conditioning_set_area",
        "Conditioning (Set Area)",
        ("width", "height", "x", "y", "strength"),
        outputs=("conditioning",),
    ),
    "ConditioningSetAreaPercentage": NodeMap(
        "conditioning_set_area_percentage",
        "Conditioning (Set Area with Percentage)",
        ("width", "height", "x", "y", "strength"),
        outputs=("conditioning",),
    ),
    "ConditioningSetTimestepRange": NodeMap(
        "conditioning_set_timestep_range",
        "ConditioningSetTimestepRange",
        ("start", "end"),
        outputs=("conditioning",),
    ),
    "LatentComposite": NodeMap(
        "latent_composite", "Latent Composite", ("x", "y", "feather"), outputs=("latent",)
    ),
    "ImageInvert": NodeMap("invert_image", "Invert Image", outputs=("image",)),
    "ImageCrop": NodeMap(
        "crop_image", "Image Crop", ("width", "height", "x", "y"), outputs=("image",)
    ),
    "ModelSamplingFlux": NodeMap(
        "model_sampling_flux",
        "ModelSamplingFlux",
        ("max_shift", "base_shift", "width", "height"),
        outputs=("model",),
        latent_size=("width", "height"),
    ),
    "VAEDecodeTiled": _tiled_vae(
        "vae_decode",
        "VAE Decode (Tiled)",
        ("samples", "latent"),
        "image",
        "Decode",
        "pixels",
        "ComfyUI's three blended passes",
    ),
    "VAEEncodeTiled": _tiled_vae(
        "vae_encode",
        "VAE Encode (Tiled)",
        ("pixels", "image"),
        "latent",
        "Encode",
        "latents",
        "ComfyUI's blended passes",
    ),
    "Canny": NodeMap(
        "canny_kornia", "Canny", ("low_threshold", "high_threshold"), outputs=("image",)
    ),
    "ImageBlur": NodeMap("image_blur", "Image Blur", ("blur_radius", "sigma"), outputs=("image",)),
    "ImageQuantize": NodeMap(
        "image_quantize", "Quantize Image", ("colors", "dither"), outputs=("image",)
    ),
    "ImageSharpen": NodeMap(
        "image_sharpen", "Image Sharpen", ("sharpen_radius", "sigma", "alpha"), outputs=("image",)
    ),
    # nodes/comfyops.py: ComfyUI's small image, mask and latent operations
    "FreeU": NodeMap(
        "freeu", "FreeU", ("b1", "b2", "s1", "s2"), outputs=("model",), fixed={"version": "v1"}
    ),
    "FreeU_V2": NodeMap(
        "freeu", "FreeU_V2", ("b1", "b2", "s1", "s2"), outputs=("model",), fixed={"version": "v2"}
    ),
    "PerturbedAttentionGuidance": NodeMap(
        "perturbed_attention_guidance",
        "PerturbedAttentionGuidance",
        ("scale",),
        outputs=("model",),
    ),
    "ConditioningSetAreaStrength": NodeMap(
        "conditioning_set_area_strength",
        "ConditioningSetAreaStrength",
        ("strength",),
        outputs=("conditioning",),
    ),
    "MaskToImage": NodeMap("mask_to_image", "Convert Mask to Image", outputs=("image",)),
    "ImageColorToMask": NodeMap(
        "image_color_to_mask", "ImageColorToMask", ("color",), outputs=("mask",)
    ),
    "CropMask": NodeMap("crop_mask", "CropMask", ("x", "y", "width", "height"), outputs=("mask",)),
    "MaskComposite": NodeMap(
        "mask_composite", "MaskComposite", ("x", "y", "operation"), outputs=("mask",)
    ),
    "ImageBlend": NodeMap(
        "image_blend", "Image Blend", ("blend_factor", "blend_mode"), outputs=("image",)
    ),
    "ImageFlip": NodeMap("image_flip", "Image Flip", ("flip_method",), outputs=("image",)),
    "ImageRotate": NodeMap("image_rotate", "Image Rotate", ("rotation",), outputs=("image",)),
    "LatentFlip": NodeMap(
        "latent_flip",
        "Flip Latent",
        ("flip_method",),
        inputs={"samples": "latent"},
        outputs=("latent",),
    ),
    "LatentRotate": NodeMap(
        "latent_rotate",
        "Rotate Latent",
        ("rotation",),
        inputs={"samples": "latent"},
        outputs=("latent",),
    ),
    "LatentCompositeMasked": NodeMap(
        "latent_composite_masked",
        "LatentCompositeMasked",
        ("x", "y", "resize_source"),
        outputs=("latent",),
    ),
    "SplitImageWithAlpha": NodeMap(
        "split_image_with_alpha", "Split Image with Alpha", outputs=("image", "mask")
    ),
    "JoinImageWithAlpha": NodeMap(
        "join_image_with_alpha", "Join Image with Alpha", outputs=("image",)
    ),
    "LatentCrop": NodeMap(
        "latent_crop",
        "Crop Latent",
        ("width", "height", "x", "y"),
        inputs={"samples": "latent"},
        outputs=("latent",),
    ),
    "LatentBatchSeedBehavior": NodeMap(
        "latent_batch_seed_behavior",
        "LatentBatchSeedBehavior",
        ("seed_behavior",),
        inputs={"samples": "latent"},
        outputs=("latent",),
    ),
    "LatentAdd": NodeMap("latent_add", "LatentAdd", outputs=("latent",)),
    "LatentSubtract": NodeMap("latent_subtract", "LatentSubtract", outputs=("latent",)),
    "LatentMultiply": NodeMap(
        "latent_multiply", "LatentMultiply", ("multiplier",), outputs=("latent",)
    ),
    "LatentInterpolate": NodeMap(
        "latent_interpolate", "LatentInterpolate", ("ratio",), outputs=("latent",)
    ),
    "ImageScaleToTotalPixels": NodeMap(
        "scale_image_total_pixels",
        "ImageScaleToTotalPixels",
        ("upscale_method", "megapixels", "resolution_steps"),
        outputs=("image",),
        older=(2,),  # before resolution_steps: any size, as its default 1
    ),
    "GrowMask": NodeMap(
        "grow_mask",
        "GrowMask",
        ("expand", "tapered_corners"),
        params={"expand": "pixels"},
        outputs=("mask",),
    ),
    "FeatherMask": NodeMap(
        "feather_mask_edges",
        "FeatherMask",
        ("left", "top", "right", "bottom"),
        outputs=("mask",),
    ),
    "ImageCompositeMasked": NodeMap(
        "image_composite_masked",
        "ImageCompositeMasked",
        ("x", "y", "resize_source"),
        outputs=("image",),
    ),
    # Two Studio nodes (the importer's load_image_mask): Load Image -> Mask from Image for a
    # colour channel; Load Image's mask output alone for alpha (1 - alpha, as ComfyUI).
    LOAD_IMAGE_MASK: NodeMap(
        "mask_from_image",
        "Load Image (as Mask)",
        ("image", "channel"),
        outputs=("mask",),
        trailing=1,
    ),
    "ThresholdMask": NodeMap(
        "threshold_mask",
        "ThresholdMask",
        ("value",),
        params={"value": "threshold"},
        outputs=("mask",),
        fixed={"compare": "above"},
    ),
    # city96's ComfyUI-GGUF loaders (an extension, common on 8-16 GB cards): Studio reads
    # GGUF transformers and GGUF T5 encoders itself (CLIP as .safetensors).
    # cubiq's ComfyUI_IPAdapter_plus (an extension; the usual way to IP-Adapter in ComfyUI).
    "IPAdapterModelLoader": NodeMap(
        "load_ipadapter", "IPAdapter Model Loader", ("ipadapter_file",), outputs=("ipadapter",)
    ),
    "IPAdapterAdvanced": NodeMap(
        "apply_ipadapter",
        "IPAdapter Advanced",
        ("weight", "weight_type", "combine_embeds", "start_at", "end_at", "embeds_scaling"),
        outputs=("model",),
        unsupported={
            "weight_type": (
                "linear",
                "its weight per block was dropped: Studio weighs all blocks alike (linear)",
            ),
            "combine_embeds": (
                "concat",
                "several reference pictures are used side by side (concat), not combined into one",
            ),
            "embeds_scaling": (
                "V only",
                "the weight scales the image attention's values only ('V only')",
            ),
        },
        dropped_inputs={
            "image_negative": "the negative reference picture was dropped (a black picture "
            "or zeros is the negative)",
            "attn_mask": "the attention mask was dropped: the reference steers the whole picture",
        },
    ),
    "UnetLoaderGGUF": NodeMap(
        "load_diffusion_model", "Unet Loader (GGUF)", ("unet_name",), outputs=("model",)
    ),
    "DualCLIPLoaderGGUF": NodeMap(
        "load_text_encoders",
        "DualCLIPLoader (GGUF)",
        ("clip_name1", "clip_name2", "type"),
        outputs=("clip",),
        trailing=1,
    ),
    "TripleCLIPLoaderGGUF": NodeMap(
        "load_text_encoders_3",
        "TripleCLIPLoader (GGUF)",
        ("clip_name1", "clip_name2", "clip_name3"),
        outputs=("clip",),
    ),
    # What the custom-sampling chain becomes (the importer's fold_custom_sampling): never
    # in a file under these names, so no export picks them.
    # output and denoised_output: equal where the schedule ends at noise level 0
    SAMPLER_CUSTOM_KSAMPLER: _folded_sampler(
        "sampler", ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")
    ),
    SAMPLER_CUSTOM_ADVANCED: _folded_sampler(
        "sampler_advanced", ("add_noise", "seed", "steps", "cfg", "sampler_name", "scheduler")
    ),
    SAMPLER_CUSTOM_SPLIT: _folded_sampler(
        "sampler_advanced",
        (
            "add_noise",
            "seed",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "start_at_step",
            "end_at_step",
            "return_with_leftover_noise",
        ),
    ),
    "PrimitiveInt": NodeMap("primitive_int", "Int", ("value",), outputs=("value",), trailing=1),
    "PrimitiveFloat": NodeMap("primitive_float", "Float", ("value",), outputs=("value",)),
    "PrimitiveString": NodeMap("primitive_string", "String", ("value",), outputs=("value",)),
    "PrimitiveBoolean": NodeMap("primitive_boolean", "Boolean", ("value",), outputs=("value",)),
    "PrimitiveStringMultiline": NodeMap(
        "primitive_string", "String (Multiline)", ("value",), outputs=("value",)
    ),
    "ReferenceLatent": NodeMap("reference_latent", "ReferenceLatent", outputs=("conditioning",)),
    "FluxKontextImageScale": NodeMap(
        "flux_kontext_image_scale", "FluxKontextImageScale", outputs=("image",)
    ),
    # FLUX.1 Redux: nodes/redux_nodes.py. Older files have no crop / strength widgets
    # (ComfyUI then cropped at the centre and applied at strength 1, Studio's defaults).
    "CLIPVisionLoader": NodeMap(
        "load_clip_vision", "Load CLIP Vision", ("clip_name",), outputs=("clip_vision",)
    ),
    "CLIPVisionEncode": NodeMap(
        "clip_vision_encode",
        "CLIP Vision Encode",
        ("crop",),
        outputs=("clip_vision_output",),
        older=(0,),
    ),
    "DifferentialDiffusion": NodeMap(
        "differential_diffusion",
        "Differential Diffusion",
        ("strength",),
        outputs=("model",),
        # ComfyUI skips the mix at strength 0 (its `if strength and strength < 1`), so its 0
        # is its 1; Studio's 0 is off
        values={"strength": {0.0: 1.0}},
        notes={("strength", 0.0): "strength 0 acts as 1 in ComfyUI; imported as 1"},
        comfy_lacks={"strength": frozenset({0.0})},
        older=(0,),
    ),
    "StyleModelLoader": NodeMap(
        "load_style_model", "Load Style Model", ("style_model_name",), outputs=("style_model",)
    ),
    "StyleModelApply": NodeMap(
        "apply_style_model",
        "Apply Style Model",
        ("strength", "strength_type"),
        outputs=("conditioning",),
        older=(0,),
    ),
    # Model merging: nodes/merge.py.
    "ModelMergeSimple": NodeMap("merge_models", "ModelMergeSimple", ("ratio",), outputs=("model",)),
    "ModelMergeBlocks": NodeMap(
        "merge_models_blocks", "ModelMergeBlocks", ("input", "middle", "out"), outputs=("model",)
    ),
    "ModelMergeSubtract": NodeMap(
        "merge_models_subtract", "ModelMergeSubtract", ("multiplier",), outputs=("model",)
    ),
    "ModelMergeAdd": NodeMap("merge_models_add", "ModelMergeAdd", (), outputs=("model",)),
    "CLIPMergeSimple": NodeMap("merge_clips", "CLIPMergeSimple", ("ratio",), outputs=("clip",)),
    "CLIPMergeSubtract": NodeMap(
        "merge_clips_subtract", "CLIPMergeSubtract", ("multiplier",), outputs=("clip",)
    ),
    "CLIPMergeAdd": NodeMap("merge_clips_add", "CLIPMergeAdd", (), outputs=("clip",)),
    "CheckpointSave": NodeMap("save_checkpoint", "Save Checkpoint", ("filename_prefix",)),
    # Image helpers: nodes/comfyimage.py.
    "ImageStitch": NodeMap(
        "image_stitch",
        "Image Stitch",
        ("direction", "match_image_size", "spacing_width", "spacing_color"),
        outputs=("image",),
    ),
    "ResizeAndPadImage": NodeMap(
        "resize_and_pad_image",
        "ResizeAndPadImage",
        ("target_width", "target_height", "padding_color", "interpolation"),
        outputs=("image",),
    ),
    "ImageScaleToMaxDimension": NodeMap(
        "scale_image_max_dimension",
        "ImageScaleToMaxDimension",
        ("upscale_method", "largest_size"),
        outputs=("image",),
    ),
    "ImageAddNoise": NodeMap(
        "image_add_noise", "ImageAddNoise", ("seed", "strength"), outputs=("image",)
    ),
    "GetImageSize": NodeMap(
        "get_image_size", "Get Image Size", (), outputs=("width", "height", "batch_size")
    ),
    "MaskPreview": NodeMap("preview_mask", "MaskPreview"),
    "StringConcatenate": NodeMap(
        "string_concatenate",
        "Concatenate",
        ("string_a", "string_b", "delimiter"),
        outputs=("string",),
    ),
}

#: The ComfyUI type each Studio type exports as (Scale Image picks by its mode).
EXPORT_TYPES: dict[str, str] = {}
for _ct, _nm in NODE_MAPS.items():
    EXPORT_TYPES.setdefault(_nm.studio, _ct)
EXPORT_TYPES["primitive_string"] = "PrimitiveStringMultiline"

#: CLIPSetLastLayer is folded into the Text Encodes it feeds (their clip skip).
CLIP_SET_LAST_LAYER = "CLIPSetLastLayer"

#: Model patches removed on import (their MODEL output is their MODEL input), with the
#: report line's reason.
PASS_THROUGH: dict[str, str] = {
    "TorchCompileModel": "it compiles the model for speed and leaves the picture as it is; "
    "Studio runs the model uncompiled",
}

#: ComfyUI core node types Studio does not map, with why (docs/importing.md lists them).
NOT_MAPPED: dict[str, str] = {
    "CLIPLoader": "loads one text encoder on its own; Studio's Load Text Encoders takes two "
    "or three",
    "CLIPLoaderGGUF": "loads one text encoder on its own; Studio's Load Text Encoders takes two "
    "or three",
    **dict.fromkeys(
        ("SaveLatent", "LoadLatent"),
        "Studio neither writes nor reads ComfyUI's .latent files yet",
    ),
    "FlipSigmas": "its sigmas cannot fold into a Studio Sampler, which computes its own "
    "schedule from steps and scheduler (two passes: Sampler (Advanced)'s start and end steps)",
    "DualCFGGuider": "a custom-sampling guider or sampler Studio's Sampler has no counterpart for",
    CLIP_SET_LAST_LAYER: "it feeds nodes other than Text Encode, Text Encode (SDXL) and Load "
    "LoRA, so it cannot become their clip skip",
}
