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
)

_CHAIN = (
    "RandomNoise or DisableNoise, BasicGuider or CFGGuider, KSamplerSelect and "
    "BasicScheduler into SamplerCustomAdvanced (or KSamplerSelect and BasicScheduler into "
    "SamplerCustom)"
)
#: A custom-sampling node left over (no whole chain around it).
NOT_A_CHAIN = (
    f"ComfyUI's custom sampling becomes one Studio Sampler only as a whole chain: {_CHAIN}"
)

#: What each input of the samplers must come from.
_SOURCES = {
    "noise": ("RandomNoise", "DisableNoise"),
    "guider": ("BasicGuider", "CFGGuider"),
    "sampler": ("KSamplerSelect",),
    "sigmas": ("BasicScheduler",),
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
        studio = (
            "Sampler (Advanced) (no noise added)"
            if fold.kind == SAMPLER_CUSTOM_ADVANCED
            else "Sampler"
        )
        report.append(
            f"{original} ({cn.id}) became one {studio} with {names} folded in (their values "
            f"are its params{''.join('; ' + line for line in fold.lines)})"
        )
        for f in fold.feeders:
            feeders[f.id] = f
    used = {src for c in g.nodes.values() for src, _slot in c.links.values()}
    for fid in feeders:
        if fid not in used:
            del g.nodes[fid]
            for key in [k for k in g.reroutes if k[0] == fid]:
                del g.reroutes[key]


def _source(g: Any, cn: Any, name: str) -> Any | str:
    link = cn.links.get(name)
    if link is None:
        return f"its {name!r} input is not connected"
    src = g.nodes.get(link[0])
    if src is None:
        return f"its {name!r} input comes from a node that is not in the file"
    if src.class_type not in _SOURCES[name]:
        return f"its {name!r} comes from {_label(src)}, not from {' or '.join(_SOURCES[name])}"
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
    _take(values, links, controls, select, ("sampler_name",))
    _take(values, links, controls, sigmas, ("scheduler", "steps", "denoise"))
    if advanced:
        noise, guider = found["noise"], found["guider"]
        add_noise = noise.class_type == "RandomNoise"
        if add_noise:
            _take(values, links, controls, noise, ("noise_seed",))
        model = guider.links.get("model")
        if guider.class_type == "CFGGuider":
            for side in ("positive", "negative"):
                if side not in guider.links:
                    return f"{_label(guider)}: its {side!r} input is not connected"
                links[side] = guider.links[side]
            _take(values, links, controls, guider, ("cfg",))
        else:
            if "conditioning" not in guider.links:
                return f"{_label(guider)}: its 'conditioning' input is not connected"
            links["positive"] = guider.links["conditioning"]
            links["negative"] = (_zero_out(g, guider), 0)
            values["cfg"] = 1.0
            lines.append(
                f"{guider.class_type}: cfg 1, the negative its prompt zeroed out (node "
                f"{guider.id}_negative), which cfg 1 ignores"
            )
        feeders = [noise, guider, select, sigmas]
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
        feeders = [select, sigmas]
    if model is None:
        return f"{_label(guider)}: its 'model' input is not connected"
    if _sampling_source(g, sigmas.links.get("model")) != _sampling_source(g, model):
        return (
            f"{_label(sigmas)} schedules with another model than the one sampled (Studio's "
            "Sampler schedules with the model it samples)"
        )
    links["model"] = model
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


#: Nodes that change a model's weights but not its sampling (its sigmas and shift).
_SAME_SAMPLING = ("LoraLoader", "LoraLoaderModelOnly")


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


def _zero_out(g: Any, guider: Any) -> str:
    """A Conditioning Zero Out of the guider's prompt, in the guider's place: the negative
    a Studio Sampler needs (ignored at cfg 1, a plain empty prompt at a higher cfg)."""
    nid = f"{guider.id}_negative"
    if nid not in g.nodes:
        g.nodes[nid] = dataclasses.replace(
            guider,
            id=nid,
            class_type="ConditioningZeroOut",
            values={},
            links={"conditioning": guider.links["conditioning"]},
            controls={},
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
