"""ComfyUI nodes that become other Studio nodes than one each: the custom-sampling chain
(noise, guider, sampler, sigmas into SamplerCustomAdvanced) folded into one Sampler, and
the prompt nodes with a text per encoder (CLIPTextEncodeFlux / SD3) as Text Encode.

These work on the importer's plain form (``_Graph`` of ``_CNode``, by ComfyUI input
name) before it is mapped, so the folded nodes then map through ``NODE_MAPS`` as any
other: the sampler keeps its ComfyUI node id, so ``--set 13.seed=7`` addresses it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from studio.graph.importers.comfyui_map import (
    CUSTOM_SAMPLING,
    SAMPLER_CUSTOM_ADVANCED,
    SAMPLER_CUSTOM_KSAMPLER,
    SAMPLER_CUSTOM_SPLIT,
)

_CHAIN = (
    "RandomNoise or DisableNoise, BasicGuider, CFGGuider or PerpNegGuider, a sampler (KSamplerSelect, or "
    "a sampler node at the KSampler's options) and a scheduler (BasicScheduler, or one "
    "equal to a Sampler schedule), maybe split by SplitSigmas, into SamplerCustomAdvanced "
    "(or the sampler and scheduler into SamplerCustom)"
)

#: ComfyUI's sampler nodes with options -> the sampler (KSamplerSelect's name) they run,
#: and the options at which it is that sampler as KSampler runs it.
SAMPLER_NODES: dict[str, tuple[str, dict[str, Any]]] = {
    "SamplerEulerAncestral": ("euler_ancestral", {"eta": 1.0, "s_noise": 1.0}),
    "SamplerDPMPP_2S_Ancestral": ("dpmpp_2s_ancestral", {"eta": 1.0, "s_noise": 1.0}),
    "SamplerDPMPP_SDE": ("dpmpp_sde", {"eta": 1.0, "s_noise": 1.0, "r": 0.5}),
    "SamplerDPMPP_2M_SDE": (
        "dpmpp_2m_sde",
        {"solver_type": "midpoint", "eta": 1.0, "s_noise": 1.0},
    ),
    "SamplerDPMPP_3M_SDE": ("dpmpp_3m_sde", {"eta": 1.0, "s_noise": 1.0}),
    "SamplerLMS": ("lms", {"order": 4}),
}
#: ComfyUI's default sigma range of its model-less schedulers: SD 1.x and SDXL's.
_SD_SIGMAS = {"sigma_max": 14.614642, "sigma_min": 0.0291675}
#: ComfyUI's scheduler nodes -> the schedule they compute, at these options.
SCHEDULER_NODES: dict[str, tuple[str, dict[str, Any]]] = {
    "KarrasScheduler": ("karras", {**_SD_SIGMAS, "rho": 7.0}),
    "ExponentialScheduler": ("exponential", dict(_SD_SIGMAS)),
    # rho 1: the exponential schedule itself
    "PolyexponentialScheduler": ("exponential", {**_SD_SIGMAS, "rho": 1.0}),
    "BetaSamplingScheduler": ("beta", {"alpha": 0.6, "beta": 0.6}),
    # SD Turbo's timesteps 999, 899, ...; below denoise 1 it starts further down the same
    # ten timesteps, which no Sampler denoise reproduces
    "SDTurboScheduler": ("sd_turbo", {"denoise": 1.0}),
}
_SPLITS = ("SplitSigmas", "SplitSigmasDenoise")
#: Samplers ComfyUI's KSampler (and so Studio's Sampler) runs on one more step with the
#: penultimate sigma dropped; custom sampling runs them on the schedule as it is.
_DISCARD_PENULTIMATE = ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2")
#: A custom-sampling node left over (no whole chain around it).
NOT_A_CHAIN = (
    f"ComfyUI's custom sampling becomes one Studio Sampler only as a whole chain: {_CHAIN}"
)

#: What each input of the samplers must come from.
_SCHEDULERS = ("BasicScheduler", *SCHEDULER_NODES)
_SOURCES = {
    "noise": ("RandomNoise", "DisableNoise"),
    "guider": ("BasicGuider", "CFGGuider", "PerpNegGuider"),
    "sampler": ("KSamplerSelect", *SAMPLER_NODES),
    "sigmas": (*_SCHEDULERS, *_SPLITS),
}
#: Widgets of the chain's nodes -> the folded sampler's ComfyUI-side name (KSampler's).
_RENAMED = {"noise_seed": "seed"}


def _label(cn: Any) -> str:
    return f"{cn.title or cn.class_type} ({cn.id})"


def _short(text: Any) -> str:
    r = repr(text)
    return r if len(r) <= 60 else r[:57] + "...'"


# -- the custom-sampling chain ------------------------------------------------------------------


@dataclasses.dataclass
class _Fold:
    kind: str
    values: dict[str, Any]
    links: dict[str, tuple[str, int]]
    controls: dict[str, Any]
    feeders: list[Any]
    #: Extra report lines (what became of the guider's negative, ...).
    lines: list[str]


def fold_custom_sampling(g: Any, report: list[str]) -> None:
    """Each SamplerCustomAdvanced / SamplerCustom whose chain collapses becomes one Sampler
    (a Sampler (Advanced) when it adds no noise); the chain's nodes that fed only folded
    samplers go. The others stay placeholders, with the reason in ``g.reasons``."""
    feeders: dict[str, Any] = {}
    for cn in [
        c for c in g.nodes.values() if c.class_type in ("SamplerCustomAdvanced", "SamplerCustom")
    ]:
        fold = _plan(g, cn)
        if isinstance(fold, str):
            g.reasons[cn.id] = f"{fold}; Studio folds only {_CHAIN}"
            for src, _slot in cn.links.values():
                if src in g.nodes and g.nodes[src].class_type in CUSTOM_SAMPLING:
                    g.reasons.setdefault(
                        src, f"it feeds {_label(cn)}, which stays a placeholder (see its line)"
                    )
            continue
        original = cn.class_type
        names = ", ".join(_label(f) for f in fold.feeders)
        cn.class_type = fold.kind
        cn.values, cn.links, cn.controls = fold.values, fold.links, fold.controls
        if cn.title == original:
            cn.title = ""
        if fold.kind == SAMPLER_CUSTOM_SPLIT:
            v = fold.values
            studio = (
                f"Sampler (Advanced) (steps {v['start_at_step']} to {v['end_at_step']} of "
                f"{v['steps']}{'' if v['add_noise'] else ', no noise added'})"
            )
        elif fold.kind == SAMPLER_CUSTOM_ADVANCED:
            studio = "Sampler (Advanced) (no noise added)"
        else:
            studio = "Sampler"
        report.append(
            f"{original} ({cn.id}) became one {studio} with {names} folded in (their values "
            f"are its params{''.join('; ' + line for line in fold.lines)})"
        )
        for f in fold.feeders:
            feeders[f.id] = f
    gone = True
    while gone:  # a scheduler feeds its split: it goes once the split has gone
        used = {src for c in g.nodes.values() for src, _slot in c.links.values()}
        gone = [fid for fid in feeders if fid in g.nodes and fid not in used]
        for fid in gone:
            del g.nodes[fid]
            for key in [k for k in g.reroutes if k[0] == fid]:
                del g.reroutes[key]


def _source(g: Any, cn: Any, name: str, types: tuple[str, ...] | None = None) -> Any | str:
    types = _SOURCES[name] if types is None else types
    link = cn.links.get(name)
    if link is None:
        return f"its {name!r} input is not connected"
    src = g.nodes.get(link[0])
    if src is None:
        return f"its {name!r} input comes from a node that is not in the file"
    if src.class_type not in types:
        kinds = " or ".join(types) if len(types) <= 4 else "a sampler or scheduler node"
        return f"its {name!r} comes from {_label(src)}, not from {kinds}"
    if src.mode in (2, 4):
        return f"{_label(src)}, which feeds its {name!r}, is muted or bypassed"
    return src


def _take(values: dict, links: dict, controls: dict, src: Any, names: tuple[str, ...]) -> None:
    """The widgets ``names`` of a chain node (a value, or the link into it) onto the
    folded sampler, under KSampler's names."""
    for name in names:
        ours = _RENAMED.get(name, name)
        if name in src.links:
            links[ours] = src.links[name]
        elif name in src.values:
            values[ours] = src.values[name]
        if name in src.controls:
            controls[ours] = src.controls[name]


def _plan(g: Any, cn: Any) -> _Fold | str:
    advanced = cn.class_type == "SamplerCustomAdvanced"
    wanted = ("noise", "guider", "sampler", "sigmas") if advanced else ("sampler", "sigmas")
    found = {}
    for name in wanted:
        src = _source(g, cn, name)
        if isinstance(src, str):
            return src
        found[name] = src
    if "latent_image" not in cn.links:
        return "its 'latent_image' input is not connected"
    values: dict[str, Any] = {}
    links: dict[str, tuple[str, int]] = {"latent_image": cn.links["latent_image"]}
    controls: dict[str, Any] = {}
    lines: list[str] = []
    sigmas, select = found["sigmas"], found["sampler"]
    split = None
    if sigmas.class_type in _SPLITS:
        split = sigmas
        sigmas = _source(g, split, "sigmas", _SCHEDULERS)
        if isinstance(sigmas, str):
            return f"{_label(split)}: {sigmas}"
    problem = _sampler(values, links, controls, select, lines)
    if problem is None:
        problem = _schedule(values, links, controls, sigmas, lines)
    if problem is not None:
        return problem
    name = values.get("sampler_name")
    if name in _DISCARD_PENULTIMATE and "sampler_name" not in links:
        lines.append(
            f"custom sampling runs {name} on the schedule as it is, Studio's Sampler as "
            "ComfyUI's KSampler does (one step more, the penultimate noise level dropped): "
            "the picture differs slightly"
        )
    if advanced:
        noise, guider = found["noise"], found["guider"]
        add_noise = noise.class_type == "RandomNoise"
        if add_noise:
            _take(values, links, controls, noise, ("noise_seed",))
        model = guider.links.get("model")
        if guider.class_type in ("CFGGuider", "PerpNegGuider"):
            for side in ("positive", "negative"):
                if side not in guider.links:
                    return f"{_label(guider)}: its {side!r} input is not connected"
                links[side] = guider.links[side]
            _take(values, links, controls, guider, ("cfg",))
        if guider.class_type == "PerpNegGuider" and model is not None:
            if "empty_conditioning" not in guider.links:
                return f"{_label(guider)}: its 'empty_conditioning' input is not connected"
            perp = _perp_neg(g, guider)
            lines.append(
                f"PerpNegGuider: its Perp-Neg became a Perp-Neg model node (node {perp}) "
                "before the Sampler, the same guidance"
            )
            model = (perp, 0)
        elif guider.class_type == "BasicGuider":
            if "conditioning" not in guider.links:
                return f"{_label(guider)}: its 'conditioning' input is not connected"
            links["positive"] = guider.links["conditioning"]
            links["negative"] = (_zero_out(g, guider), 0)
            values["cfg"] = 1.0
            lines.append(
                f"{guider.class_type}: cfg 1, the negative its prompt zeroed out (node "
                f"{guider.id}_negative), which cfg 1 ignores"
            )
        feeders = [noise, guider, select, sigmas, *([split] if split else [])]
    else:
        guider = cn
        model = cn.links.get("model")
        add_noise = cn.values.get("add_noise", True)
        if not isinstance(add_noise, bool):
            return f"its add_noise {add_noise!r} is not true or false"
        for side in ("positive", "negative"):
            if side not in cn.links:
                return f"its {side!r} input is not connected"
            links[side] = cn.links[side]
        _take(values, links, controls, cn, ("cfg",) + (("noise_seed",) if add_noise else ()))
        feeders = [select, sigmas, *([split] if split else [])]
    if model is None:
        return f"{_label(guider)}: its 'model' input is not connected"
    schedules_with = sigmas.links.get("model")
    if "model" in CUSTOM_SCHEDULER_INPUTS.get(sigmas.class_type, ("model",)) and (
        _sampling_source(g, schedules_with) != _sampling_source(g, model)
    ):
        return (
            f"{_label(sigmas)} schedules with another model than the one sampled (Studio's "
            "Sampler schedules with the model it samples)"
        )
    links["model"] = model
    if split is not None:
        return _split(g, cn, split, add_noise, values, links, controls, feeders, lines)
    if not add_noise:
        denoise = sigmas.values.get("denoise", 1.0)
        if "denoise" in sigmas.links or denoise != 1.0:
            return (
                f"it adds no noise with {_label(sigmas)}'s denoise {denoise!r} below 1 "
                "(Studio's Sampler (Advanced), which can add no noise, has no denoise)"
            )
        values.pop("denoise", None)
        values.update(add_noise=False, seed=0)
    if any(slot == 1 for c in g.nodes.values() for src, slot in c.links.values() if src == cn.id):
        lines.append(
            "its denoised_output is the Sampler's latent (the same latent: the schedule ends "
            "at noise level 0)"
        )
    kind = SAMPLER_CUSTOM_KSAMPLER if add_noise else SAMPLER_CUSTOM_ADVANCED
    return _Fold(kind, values, links, controls, feeders, lines)


#: The model input of each scheduler node (the model-less ones take ComfyUI's SD range).
CUSTOM_SCHEDULER_INPUTS: dict[str, tuple[str, ...]] = {
    "KarrasScheduler": (),
    "ExponentialScheduler": (),
    "PolyexponentialScheduler": (),
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, float) and isinstance(a, int | float) and not isinstance(a, bool):
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return a == b


def _options(node: Any, wanted: dict[str, Any], what: str) -> str | None:
    """Why ``node``'s options are not ``wanted`` (a link into one, another value), or None;
    ``what`` says what the wanted values are."""
    for name, value in wanted.items():
        if name in node.links:
            return f"{_label(node)}: its {name} comes from another node"
        got = node.values.get(name, value)
        if not _same(got, value):
            return f"{_label(node)}: its {name} {got!r} is not {value!r} ({what})"
    return None


def _sampler(values: dict, links: dict, controls: dict, select: Any, lines: list) -> str | None:
    """The sampler's name onto the folded sampler (KSamplerSelect's, or what a sampler node
    at the KSampler's options is)."""
    if select.class_type == "KSamplerSelect":
        _take(values, links, controls, select, ("sampler_name",))
        return None
    name, wanted = SAMPLER_NODES[select.class_type]
    problem = _options(select, wanted, f"what Studio's Sampler runs {name} with")
    if problem is not None:
        return problem
    device = select.values.get("noise_device", "cpu")
    if "noise_device" in select.links or device not in ("cpu", "gpu"):
        return f"{_label(select)}: its noise_device {device!r} is not cpu or gpu"
    values["sampler_name"] = f"{name}_gpu" if device == "gpu" else name
    return None


def _schedule(values: dict, links: dict, controls: dict, sigmas: Any, lines: list) -> str | None:
    """The schedule onto the folded sampler: BasicScheduler's scheduler, steps and denoise,
    or the schedule a scheduler node equals."""
    if sigmas.class_type == "BasicScheduler":
        _take(values, links, controls, sigmas, ("scheduler", "steps", "denoise"))
        return None
    name, wanted = SCHEDULER_NODES[sigmas.class_type]
    problem = _options(sigmas, wanted, f"the {name} schedule Studio's Sampler computes")
    if problem is not None:
        return problem
    _take(values, links, controls, sigmas, ("steps",))
    values["scheduler"] = name
    if not CUSTOM_SCHEDULER_INPUTS.get(sigmas.class_type, ("model",)):
        lines.append(
            f"{_label(sigmas)}: ComfyUI's default noise range (SD 1.x and SDXL's), which "
            f"Studio's {name} schedule takes from the model"
        )
    return None


def _split(
    g: Any,
    cn: Any,
    split: Any,
    add_noise: bool,
    values: dict,
    links: dict,
    controls: dict,
    feeders: list,
    lines: list,
) -> _Fold | str:
    """A sampler fed one part of SplitSigmas / SplitSigmasDenoise: a Sampler (Advanced) over
    those steps of the whole schedule (ComfyUI's KSampler (Advanced) takes the same noise
    levels: the scheduler's for its total steps, from the start step to the end step)."""
    part = cn.links["sigmas"][1]
    for name in ("steps", "denoise"):
        if name in links:
            return f"its schedule's {name} comes from another node (a split needs the number)"
    option = "step" if split.class_type == "SplitSigmas" else "denoise"
    if option in split.links:
        return f"{_label(split)}: its {option} comes from another node"
    steps, denoise = values.get("steps", 20), values.pop("denoise", 1.0)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        return f"its schedule's steps {steps!r} is not a whole number of at least 1"
    if not isinstance(denoise, int | float) or not 0.0 < denoise <= 1.0:
        return f"its schedule's denoise {denoise!r} is not above 0 and at most 1"
    total = int(steps / denoise) if denoise < 1.0 else steps
    offset = total - steps
    if option == "step":
        at = split.values.get("step", 0)
        if not isinstance(at, int) or isinstance(at, bool):
            return f"{_label(split)}: its step {at!r} is not a whole number"
    else:
        fraction = split.values.get("denoise", 1.0)
        if not isinstance(fraction, int | float) or isinstance(fraction, bool):
            return f"{_label(split)}: its denoise {fraction!r} is not a number"
        if not 0.0 <= fraction <= 1.0:  # NaN too
            return f"{_label(split)}: its denoise {fraction!r} is not between 0 and 1"
        at = steps - round(steps * fraction)
    if not 0 < at < steps:
        return f"{_label(split)} splits {steps} steps at {at}, which leaves one part without steps"
    denoised_used = any(
        slot == 1 for c in g.nodes.values() for src, slot in c.links.values() if src == cn.id
    )
    if part == 0:  # high sigmas: from the start, stopping with the noise left
        start, end, leftover = offset, offset + at, True
        if denoised_used:
            return (
                "its denoised_output (the prediction at the split) is used; Studio's Sampler "
                "(Advanced) gives the latent with its noise left"
            )
    else:
        start, end, leftover = offset + at, total, False
        if denoised_used:
            lines.append(
                "its denoised_output is the Sampler's latent (the same latent: the schedule "
                "ends at noise level 0)"
            )
    values.update(
        steps=total,
        start_at_step=start,
        end_at_step=end,
        return_with_leftover_noise=leftover,
        add_noise=add_noise,
    )
    if not add_noise:
        values["seed"] = 0  # DisableNoise's seed: the one ancestral samplers' noise takes
        links.pop("seed", None)
    return _Fold(SAMPLER_CUSTOM_SPLIT, values, links, controls, feeders, lines)


#: Nodes that change a model's weights but not its sampling (its sigmas and shift).
_SAME_SAMPLING = ("LoraLoader", "LoraLoaderModelOnly", "PerpNeg")


def _sampling_source(g: Any, link: tuple[str, int] | None) -> tuple[str, int] | None:
    """The model output a link's model samples as: LoRAs on the way change no sigma, so a
    BasicScheduler before the LoRAs schedules as the guider after them."""
    seen = set()
    while link is not None and link not in seen:
        seen.add(link)
        node = g.nodes.get(link[0])
        if node is None or node.class_type not in _SAME_SAMPLING or link[1] != 0:
            break
        link = node.links.get("model")
    return link


def _perp_neg(g: Any, guider: Any) -> str:
    """A PerpNeg model node (ComfyUI's own, deprecated by PerpNegGuider: the same formula in
    place of cfg) on the guider's model, with its empty prompt and neg_scale."""
    values: dict[str, Any] = {}
    links: dict[str, tuple[str, int]] = {}
    controls: dict[str, Any] = {}
    _take(values, links, controls, guider, ("neg_scale",))
    links |= {
        "model": guider.links["model"],
        "empty_conditioning": guider.links["empty_conditioning"],
    }
    return _added(g, guider, "perpneg", "PerpNeg", values, links, controls)


def _zero_out(g: Any, guider: Any) -> str:
    """A Conditioning Zero Out of the guider's prompt, in the guider's place: the negative
    a Studio Sampler needs (ignored at cfg 1, a plain empty prompt at a higher cfg)."""
    links = {"conditioning": guider.links["conditioning"]}
    return _added(g, guider, "negative", "ConditioningZeroOut", {}, links, {})


def _added(
    g: Any, guider: Any, suffix: str, class_type: str, values: dict, links: dict, controls: dict
) -> str:
    """A node the fold adds in the guider's place (id ``<guider id>_<suffix>``), once."""
    nid = f"{guider.id}_{suffix}"
    if nid not in g.nodes:
        g.nodes[nid] = dataclasses.replace(
            guider,
            id=nid,
            class_type=class_type,
            values=values,
            links=links,
            controls=controls,
            studio_params={},
            title="",
            widgets_values=None,
            ui_inputs=[],
            ui_outputs=[],
        )
    return nid


# -- prompts with a text per encoder --------------------------------------------------------------


def split_prompt_nodes(g: Any, report: list[str]) -> None:
    """CLIPTextEncodeFlux as Text Encode (its id + ``_text``) -> Flux Guidance (its id);
    CLIPTextEncodeSD3 as Text Encode. Studio's Text Encode gives every encoder one text:
    the T5-XXL one (the first not empty of T5, CLIP-G, CLIP-L for SD3); a different text
    for another encoder is reported as dropped."""
    for cn in [c for c in g.nodes.values() if c.class_type == "CLIPTextEncodeFlux"]:
        _one_text(cn, ("t5xxl", "clip_l"), report)
        text_id = f"{cn.id}_text"
        layout = cn.layout
        if layout is not None:
            layout = dataclasses.replace(layout, pos=(layout.pos[0] - 340.0, layout.pos[1]))
        text_links = {k: v for k, v in cn.links.items() if k in ("clip", "text")}
        g.nodes[text_id] = dataclasses.replace(
            cn,
            id=text_id,
            class_type="CLIPTextEncode",
            values={"text": cn.values.get("text", "")},
            links=text_links,
            controls={},
            title="",
            layout=layout,
            widgets_values=None,
            ui_inputs=[],
            ui_outputs=[],
        )
        for name in text_links:
            if (cn.id, name) in g.reroutes:
                g.reroutes[(text_id, name)] = g.reroutes.pop((cn.id, name))
        guidance = {"conditioning": (text_id, 0)}
        if "guidance" in cn.links:
            guidance["guidance"] = cn.links["guidance"]
        cn.values = {"guidance": cn.values.get("guidance", 3.5)}
        cn.links = guidance
        if cn.title == "CLIPTextEncodeFlux":
            cn.title = ""
        cn.class_type = "FluxGuidance"
    for cn in [c for c in g.nodes.values() if c.class_type == "CLIPTextEncodeSD3"]:
        padding = cn.values.pop("empty_padding", "none")
        texts = [cn.values.get(k, "") for k in ("clip_l", "clip_g", "t5xxl")]
        _one_text(cn, ("t5xxl", "clip_g", "clip_l"), report)
        if padding == "none" and any(t == "" for t in texts):
            report.append(
                f"{_label(cn)}: empty_padding 'none' was dropped: Studio encodes an empty "
                "text as its pipeline does (the tokenizer's padding), so the picture may differ"
            )
        if cn.title == "CLIPTextEncodeSD3":
            cn.title = ""
        cn.class_type = "CLIPTextEncode"


def _one_text(cn: Any, order: tuple[str, ...], report: list[str]) -> None:
    """``cn``'s texts (by ComfyUI widget, in ``order`` of preference) as one ``text``."""
    linked = [k for k in order if k in cn.links]
    if linked:  # a text from another node (a String primitive): that one
        chosen = linked[0]
        cn.links["text"] = cn.links.pop(chosen)
    else:
        chosen = next((k for k in order if cn.values.get(k)), order[0])
        cn.values["text"] = cn.values.get(chosen, "")
    text = cn.values.get("text") if not linked else None
    for k in order:
        if k == chosen:
            continue
        if k in cn.links:
            cn.links.pop(k)
            report.append(
                f"{_label(cn)}: the link into {k!r} was dropped: {_SAME_TEXT.format(chosen)}"
            )
        elif k in cn.values and (linked or cn.values[k] != text):
            report.append(
                f"{_label(cn)}: the {k} text {_short(cn.values[k])} was dropped: "
                + _SAME_TEXT.format(chosen)
            )
    for k in order:
        cn.values.pop(k, None)


_SAME_TEXT = "Studio's Text Encode gives every text encoder one text (here the {} one)"
