"""Inpainting in one action: find the inpaint part of a workflow, or build one from the
inpaint template around a picture, keeping the document's checkpoint, prompts and seed.

Pure graph edits (no Qt, no torch): the app's "Inpaint" action calls these, then opens
the mask painter on the picture's Load Image node.
"""

from __future__ import annotations

from studio.graph.workflow import Node, Workflow

#: Node types that take the mask that says where to repaint.
MASK_USERS = frozenset(
    {
        "set_latent_noise_mask",
        "vae_encode_inpaint",
        "composite_masked",
        "inpaint_model_conditioning",
    }
)
#: The picture loader whose painted mask is its ``mask`` output.
LOADER = "load_image"


def inpaint_source(wf: Workflow, prefer: str | None = None) -> str | None:
    """The Load Image node whose mask output feeds the inpaint nodes (``prefer`` when it
    is one of them), or None when the workflow does not inpaint."""
    sources: list[str] = []
    for lk in wf.links:
        if lk.output != "mask" or not wf.has_node(lk.target) or not wf.has_node(lk.source):
            continue
        feeds = wf.get_node(lk.target).type in MASK_USERS
        if feeds and wf.get_node(lk.source).type == LOADER and lk.source not in sources:
            sources.append(lk.source)
    if prefer in sources:
        return prefer
    return sources[0] if sources else None


def _first(wf: Workflow, type_id: str) -> Node | None:
    return next((n for n in wf.nodes if n.type == type_id), None)


def _prompt_texts(wf: Workflow) -> tuple[str | None, str | None]:
    """The texts of the Text Encodes feeding the first sampler's positive and negative."""
    sampler = _first(wf, "sampler")
    if sampler is None:
        return None, None
    texts: list[str | None] = []
    for name in ("positive", "negative"):
        lk = wf.link_into(sampler.id, name)
        src = wf.get_node(lk.source) if lk is not None else None
        text = src.params.get("text") if src is not None and src.type == "text_encode" else None
        texts.append(text if isinstance(text, str) else None)
    return texts[0], texts[1]


def inpaint_workflow(
    template: Workflow, current: Workflow | None, image: str
) -> tuple[Workflow, str]:
    """The inpaint template with ``image`` as its picture (and no mask yet), carrying over
    the current document's checkpoint, prompts and seed where it has them.

    Returns the new workflow and the id of the picture's Load Image node.
    """
    wf = template.copy()
    wf.path = None
    source = inpaint_source(wf)
    if source is None:
        raise ValueError("the inpaint template has no Load Image whose mask feeds the inpaint")
    wf.put_param(source, "image", image)
    wf.put_param(source, "mask", "")
    if current is None:
        return wf, source
    ckpt, mine = _first(current, "load_checkpoint"), _first(wf, "load_checkpoint")
    if ckpt is not None and mine is not None and ckpt.params.get("ckpt_name"):
        wf.put_param(mine.id, "ckpt_name", ckpt.params["ckpt_name"])
    positive, negative = _prompt_texts(current)
    new_pos, new_neg = _prompt_ids(wf)
    if positive is not None and new_pos is not None:
        wf.put_param(new_pos, "text", positive)
    if negative is not None and new_neg is not None:
        wf.put_param(new_neg, "text", negative)
    old_sampler, new_sampler = _first(current, "sampler"), _first(wf, "sampler")
    if old_sampler is not None and new_sampler is not None and "seed" in old_sampler.params:
        wf.put_param(new_sampler.id, "seed", old_sampler.params["seed"])
    return wf, source


def _prompt_ids(wf: Workflow) -> tuple[str | None, str | None]:
    sampler = _first(wf, "sampler")
    if sampler is None:
        return None, None
    ids: list[str | None] = []
    for name in ("positive", "negative"):
        lk = wf.link_into(sampler.id, name)
        ids.append(lk.source if lk is not None else None)
    return ids[0], ids[1]
