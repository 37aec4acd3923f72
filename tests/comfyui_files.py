"""ComfyUI files written for the importer's tests, from the documented formats."""

from __future__ import annotations

from typing import Any


def ui_node(
    nid: int,
    ctype: str,
    widgets: list[Any] | None = None,
    *,
    inputs: list[tuple[str, str, int | None]] = (),
    outputs: list[tuple[str, str, list[int]]] = (),
    pos: tuple[float, float] = (0, 0),
    size: tuple[float, float] = (300, 120),
    mode: int = 0,
    title: str | None = None,
    widget_inputs: tuple[str, ...] = (),
) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": nid,
        "type": ctype,
        "pos": list(pos),
        "size": list(size),
        "flags": {},
        "order": 0,
        "mode": mode,
        "inputs": [
            {
                "name": n,
                "type": t,
                "link": lk,
                **({"widget": {"name": n}} if n in widget_inputs else {}),
            }
            for n, t, lk in inputs
        ],
        "outputs": [{"name": n, "type": t, "links": lks} for n, t, lks in outputs],
        "properties": {"Node name for S&R": ctype},
        "widgets_values": widgets if widgets is not None else [],
    }
    if title is not None:
        node["title"] = title
    return node


def txt2img_ui(
    *,
    seed: int = 0,
    control: Any = "fixed",
    steps: int = 20,
    cfg: float = 7.0,
    text: str = "a large yellow triangle on a purple background, right",
    negative: str = "",
) -> dict[str, Any]:
    """ComfyUI's default txt2img graph (ids as in ComfyUI's default), on studio-tiny."""
    nodes = [
        ui_node(
            4,
            "CheckpointLoaderSimple",
            ["studio-tiny"],
            outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [3, 5]), ("VAE", "VAE", [8])],
            pos=(26, 474),
        ),
        ui_node(
            6,
            "CLIPTextEncode",
            [text],
            inputs=[("clip", "CLIP", 3)],
            outputs=[("CONDITIONING", "CONDITIONING", [4])],
            pos=(415, 186),
        ),
        ui_node(
            7,
            "CLIPTextEncode",
            [negative],
            inputs=[("clip", "CLIP", 5)],
            outputs=[("CONDITIONING", "CONDITIONING", [6])],
            pos=(413, 389),
        ),
        ui_node(
            5, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT", [2])], pos=(473, 609)
        ),
        ui_node(
            3,
            "KSampler",
            [seed, control, steps, cfg, "euler", "normal", 1],
            inputs=[
                ("model", "MODEL", 1),
                ("positive", "CONDITIONING", 4),
                ("negative", "CONDITIONING", 6),
                ("latent_image", "LATENT", 2),
            ],
            outputs=[("LATENT", "LATENT", [7])],
            pos=(863, 186),
        ),
        ui_node(
            8,
            "VAEDecode",
            [],
            inputs=[("samples", "LATENT", 7), ("vae", "VAE", 8)],
            outputs=[("IMAGE", "IMAGE", [9])],
            pos=(1209, 188),
        ),
        ui_node(9, "SaveImage", ["ComfyUI"], inputs=[("images", "IMAGE", 9)], pos=(1451, 189)),
    ]
    links = [
        [1, 4, 0, 3, 0, "MODEL"],
        [2, 5, 0, 3, 3, "LATENT"],
        [3, 4, 1, 6, 0, "CLIP"],
        [4, 6, 0, 3, 1, "CONDITIONING"],
        [5, 4, 1, 7, 0, "CLIP"],
        [6, 7, 0, 3, 2, "CONDITIONING"],
        [7, 3, 0, 8, 0, "LATENT"],
        [8, 4, 2, 8, 1, "VAE"],
        [9, 8, 0, 9, 0, "IMAGE"],
    ]
    return {
        "last_node_id": 9,
        "last_link_id": 9,
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def txt2img_api(*, seed: int = 0, steps: int = 20, cfg: float = 7.0) -> dict[str, Any]:
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
            "_meta": {"title": "KSampler"},
        },
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "studio-tiny"},
            "_meta": {"title": "Load Checkpoint"},
        },
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
            "_meta": {"title": "Empty Latent Image"},
        },
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a cat", "clip": ["4", 1]},
            "_meta": {"title": "CLIP Text Encode (Prompt)"},
        },
        "7": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "", "clip": ["4", 1]},
            "_meta": {"title": "CLIP Text Encode (Prompt)"},
        },
        "8": {
            "class_type": "VAEDecode",
            "inputs": {"samples": ["3", 0], "vae": ["4", 2]},
            "_meta": {"title": "VAE Decode"},
        },
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
            "_meta": {"title": "Save Image"},
        },
    }
