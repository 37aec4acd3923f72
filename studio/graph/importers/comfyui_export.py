"""Studio workflows as ComfyUI prompts (API format): the importer's mirror.

Every node maps back through :data:`~studio.graph.importers.comfyui_map.NODE_MAPS`;
placeholders imported from ComfyUI go back as they came. A node with no ComfyUI
counterpart, or a param ComfyUI cannot express, makes the export fail with one
message naming every such node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.errors import WorkflowFileError
from studio.fsutil import atomic_write_bytes
from studio.graph.importers.comfyui_map import (
    CLIP_SET_LAST_LAYER,
    EXPORT_TYPES,
    NODE_MAPS,
    PLACEHOLDER_PREFIX,
    NodeMap,
    sampled_latent_sizes,
)
from studio.graph.workflow import Node, Workflow, param_value


def export_comfyui_api(wf: Workflow, *, path: str = "the workflow") -> dict[str, Any]:
    """The workflow as a ComfyUI prompt: ``{id: {"class_type", "inputs", "_meta"}}``.

    Muted nodes are left out and bypassed nodes are passed through, as ComfyUI's
    frontend does when it queues a prompt. Raises
    :class:`~studio.errors.WorkflowFileError` naming every node that cannot be written.
    """
    return _Exporter(wf, path).run()


def write_comfyui_api(wf: Workflow, out: str | Path, *, path: str = "the workflow") -> None:
    """Write the workflow to ``out`` as a ComfyUI prompt (atomically). Raises
    WorkflowFileError as :func:`export_comfyui_api` does, and OSError."""
    prompt = export_comfyui_api(wf, path=path)
    text = json.dumps(prompt, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(Path(out), text.encode("utf-8"))


class _Exporter:
    def __init__(self, wf: Workflow, path: str):
        self.wf = wf
        self.path = path
        self.problems: list[str] = []
        self.prompt: dict[str, Any] = {}
        self.maps: dict[str, tuple[str, NodeMap | None]] = {}

    def run(self) -> dict[str, Any]:
        active = [n for n in self.wf.nodes if not n.mute and not n.bypass and not self._frontend(n)]
        for n in active:
            self.maps[n.id] = self._class_of(n)
        for n in active:
            if self.maps[n.id][0]:
                self._node(n)
        if self.problems:
            lines = "\n".join(f"  {p}" for p in self.problems)
            raise WorkflowFileError(self.path, f"cannot be written as a ComfyUI prompt:\n{lines}")
        return self.prompt

    def _frontend(self, n: Node) -> bool:
        spec = self.wf.spec_of(n)
        return spec is not None and spec.frontend_only

    def _label(self, n: Node) -> str:
        return f"{self.wf.display_title(n)} ({n.id})"

    def _class_of(self, n: Node) -> tuple[str, NodeMap | None]:
        comfy = n.extra.get("comfyui")
        if n.type.startswith(PLACEHOLDER_PREFIX) and isinstance(comfy, dict):
            if comfy.get("widgets_values"):
                self.problems.append(
                    f"{self._label(n)}: a {comfy.get('class_type')} from a ComfyUI workflow file "
                    "keeps its widget values by position only, so they cannot be named"
                )
                return "", None
            return str(comfy.get("class_type")), None
        ct = EXPORT_TYPES.get(n.type)
        if ct is None:
            self.problems.append(f"{self._label(n)}: {n.type!r} has no ComfyUI counterpart")
            return "", None
        if n.type in ("vae_decode", "vae_encode"):
            spec = self.wf.spec_of(n)
            if spec is not None and param_value(n, spec, "tiled"):
                ct += "Tiled"
        if n.type == "freeu":
            spec = self.wf.spec_of(n)
            if spec is not None and param_value(n, spec, "version") == "v1":
                ct = "FreeU"
            else:
                ct = "FreeU_V2"
        if n.type == "scale_image":
            spec = self.wf.spec_of(n)
            if spec is not None and param_value(n, spec, "mode") == "factor":
                ct = "ImageScaleBy"
            else:
                ct = "ImageScale"
        return ct, NODE_MAPS[ct]

    def _node(self, n: Node) -> None:
        ct, nm = self.maps[n.id]
        inputs: dict[str, Any] = {}
        if nm is None:
            inputs.update(n.params)
        else:
            self._params(n, nm, inputs)
        for lk in self.wf.links_into(n.id):
            src = self._source(lk.source, lk.output)
            name = lk.input if nm is None else nm.comfy_input(lk.input)
            if src is not None:
                inputs[name] = src
            else:
                inputs.pop(name, None)
        if n.type in ("text_encode", "text_encode_sdxl"):
            self._clip_skip(n, inputs)
        title = n.title or (nm.comfy_title if nm else ct)
        self.prompt[n.id] = {"class_type": ct, "inputs": inputs, "_meta": {"title": title}}

    def _params(self, n: Node, nm: NodeMap, inputs: dict[str, Any]) -> None:
        spec = self.wf.spec_of(n)
        if spec is None:  # mapped types come from the registry
            return
        covered = set(nm.fixed) | set(nm.export_free) | {"clip_skip"}
        if nm.latent_size:
            # ComfyUI takes the size as widgets: the sampled latent's where it is known
            # (one size), else ComfyUI's default 1024 x 1024
            sizes = [s for s in sampled_latent_sizes(self.wf, n.id) if s is not None]
            size = sizes[0] if len(sizes) == 1 else (1024,) * len(nm.latent_size)
            inputs.update(zip(nm.latent_size, size, strict=True))
        for comfy in nm.widgets:
            if comfy in nm.latent_size:
                continue
            if comfy in nm.unsupported:
                inputs[comfy] = nm.unsupported[comfy][0]
                continue
            studio = nm.params.get(comfy, comfy)
            covered.add(studio)
            value = param_value(n, spec, studio)
            back = {v: k for k, v in nm.values.get(comfy, {}).items() if k not in _LOSSY}
            inputs[comfy] = back.get(value, value) if _hashable(value) else value
            if _hashable(value) and value in nm.comfy_lacks.get(studio, ()):
                self.problems.append(f"{self._label(n)}: {studio} {value!r} is not one ComfyUI has")
        for name, value in nm.fixed.items():
            if param_value(n, spec, name) != value and not self._fixed_ok(n, spec, name):
                self.problems.append(
                    f"{self._label(n)}: {name!r} = {param_value(n, spec, name)!r} has no "
                    f"ComfyUI counterpart in {EXPORT_TYPES.get(n.type)}"
                )
        linked = {lk.input for lk in self.wf.links_into(n.id)}
        for inp in spec.params:
            if inp.name in covered or inp.name in linked:
                continue
            value = param_value(n, spec, inp.name)
            if value != inp.default and value not in (None, ""):
                self.problems.append(
                    f"{self._label(n)}: {inp.name!r} = {value!r} has no ComfyUI counterpart"
                )

    def _fixed_ok(self, n: Node, spec: Any, name: str) -> bool:
        # Scale Image to a size keeping the aspect is ComfyUI's ImageScale with a 0 side.
        if n.type == "scale_image" and name == "keep_aspect":
            return 0 in (param_value(n, spec, "width"), param_value(n, spec, "height"))
        return False

    def _source(self, node_id: str, output: str) -> list[Any] | None:
        """[ComfyUI node id, output slot] of a Studio output, through bypassed nodes."""
        seen = set()
        while True:
            n = self.wf.get_node(node_id)
            if n.mute or node_id in seen:
                return None
            seen.add(node_id)
            if not n.bypass:
                break
            spec = self.wf.spec_of(n)
            out = spec.output(output) if spec else None
            if out is None:
                return None
            links = {lk.input: lk for lk in self.wf.links_into(node_id)}
            same = [i for i in spec.inputs if i.type == out.type and i.name in links]
            pick = next((i for i in same if i.name == output), same[0] if same else None)
            if pick is None:
                return None
            node_id, output = links[pick.name].source, links[pick.name].output
        ct, nm = self.maps.get(node_id, ("", None))
        if not ct:
            return None
        if nm is not None:
            outputs = nm.outputs
        else:
            outputs = tuple(n.extra.get("comfyui", {}).get("outputs", ()))
        if output in outputs:
            return [node_id, outputs.index(output)]
        if output.startswith("output_") and output[7:].isdigit():
            return [node_id, int(output[7:])]
        self.problems.append(f"{self._label(n)}: output {output!r} has no ComfyUI slot")
        return None

    def _clip_skip(self, n: Node, inputs: dict[str, Any]) -> None:
        spec = self.wf.spec_of(n)
        skip = param_value(n, spec, "clip_skip") if spec else 1
        clip = inputs.get("clip")
        if not isinstance(skip, int) or skip == 1 or clip is None:
            return
        csl = f"{clip[0]}.{clip[1]}.clip_skip_{skip}"
        self.prompt[csl] = {
            "class_type": CLIP_SET_LAST_LAYER,
            "inputs": {"stop_at_clip_layer": -skip, "clip": clip},
            "_meta": {"title": "CLIP Set Last Layer"},
        }
        inputs["clip"] = [csl, 0]


#: ComfyUI values that map onto a Studio value another ComfyUI value also maps onto:
#: an export writes the plain one (Differential Diffusion's strength 0 acts as ComfyUI's 1).
_LOSSY = frozenset({"dpmpp_sde_gpu", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde_gpu", 0.0})


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
