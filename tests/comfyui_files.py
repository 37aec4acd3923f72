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


def _ui_file(nodes: list[dict[str, Any]], links: list[list[Any]]) -> dict[str, Any]:
    return {
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": max(lk[0] for lk in links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def flux_dev_ui(
    *,
    seed: int = 219670278747233,
    control: Any = "randomize",
    steps: int = 20,
    size: int = 1024,
    text: str = "cute anime girl with massive fluffy fennec ears and a big fluffy tail",
    unet: str = "flux1-dev.safetensors",
    clips: tuple[str, str] = ("t5xxl_fp16.safetensors", "clip_l.safetensors"),
    vae: str = "ae.safetensors",
    sampler: str = "euler",
    scheduler: str = "simple",
    guidance: float = 3.5,
    unet_loader: str = "UNETLoader",
    clip_loader: str = "DualCLIPLoader",
) -> dict[str, Any]:
    """ComfyUI's official Flux dev example (comfyanonymous.github.io/ComfyUI_examples/flux,
    its node ids): UNETLoader, DualCLIPLoader, CLIPTextEncode, FluxGuidance, BasicGuider,
    RandomNoise, KSamplerSelect, BasicScheduler, EmptySD3LatentImage into
    SamplerCustomAdvanced, then VAELoader, VAEDecode, SaveImage. ``unet_loader`` and
    ``clip_loader`` swap in city96's GGUF loaders (UnetLoaderGGUF has no weight dtype)."""
    unet_widgets = [unet] if unet_loader == "UnetLoaderGGUF" else [unet, "default"]
    clip_widgets = [*clips, "flux"] + ([] if clip_loader.endswith("GGUF") else ["default"])
    nodes = [
        ui_node(12, unet_loader, unet_widgets, outputs=[("MODEL", "MODEL", [56, 55])],
                pos=(-280, 310)),
        ui_node(11, clip_loader, clip_widgets, outputs=[("CLIP", "CLIP", [10])], pos=(-280, 470)),
        ui_node(6, "CLIPTextEncode", [text], inputs=[("clip", "CLIP", 10)],
                outputs=[("CONDITIONING", "CONDITIONING", [41])], pos=(380, 250),
                title="CLIP Text Encode (Positive Prompt)"),
        ui_node(26, "FluxGuidance", [guidance], inputs=[("conditioning", "CONDITIONING", 41)],
                outputs=[("CONDITIONING", "CONDITIONING", [42])], pos=(570, 50)),
        ui_node(22, "BasicGuider", [], inputs=[("model", "MODEL", 56),
                ("conditioning", "CONDITIONING", 42)], outputs=[("GUIDER", "GUIDER", [30])],
                pos=(960, 66)),
        ui_node(25, "RandomNoise", [seed, control], outputs=[("NOISE", "NOISE", [37])],
                pos=(470, 611)),
        ui_node(16, "KSamplerSelect", [sampler], outputs=[("SAMPLER", "SAMPLER", [19])],
                pos=(470, 749)),
        ui_node(17, "BasicScheduler", [scheduler, steps, 1], inputs=[("model", "MODEL", 55)],
                outputs=[("SIGMAS", "SIGMAS", [20])], pos=(470, 867)),
        ui_node(27, "EmptySD3LatentImage", [size, size, 1],
                outputs=[("LATENT", "LATENT", [116])], pos=(471, 455)),
        ui_node(13, "SamplerCustomAdvanced", [], inputs=[("noise", "NOISE", 37),
                ("guider", "GUIDER", 30), ("sampler", "SAMPLER", 19), ("sigmas", "SIGMAS", 20),
                ("latent_image", "LATENT", 116)],
                outputs=[("output", "LATENT", [24]), ("denoised_output", "LATENT", [])],
                pos=(864, 192)),
        ui_node(10, "VAELoader", [vae], outputs=[("VAE", "VAE", [12])], pos=(1000, 500)),
        ui_node(8, "VAEDecode", [], inputs=[("samples", "LATENT", 24), ("vae", "VAE", 12)],
                outputs=[("IMAGE", "IMAGE", [9])], pos=(1248, 192)),
        ui_node(9, "SaveImage", ["ComfyUI"], inputs=[("images", "IMAGE", 9)], pos=(1400, 192)),
    ]  # fmt: skip
    links = [
        [9, 8, 0, 9, 0, "IMAGE"],
        [10, 11, 0, 6, 0, "CLIP"],
        [12, 10, 0, 8, 1, "VAE"],
        [19, 16, 0, 13, 2, "SAMPLER"],
        [20, 17, 0, 13, 3, "SIGMAS"],
        [24, 13, 0, 8, 0, "LATENT"],
        [30, 22, 0, 13, 1, "GUIDER"],
        [37, 25, 0, 13, 0, "NOISE"],
        [41, 6, 0, 26, 0, "CONDITIONING"],
        [42, 26, 0, 22, 1, "CONDITIONING"],
        [55, 12, 0, 17, 0, "MODEL"],
        [56, 12, 0, 22, 0, "MODEL"],
        [116, 27, 0, 13, 4, "LATENT"],
    ]
    return _ui_file(nodes, links)


def sd35_ui(
    *,
    seed: int = 714385876577302,
    steps: int = 30,
    cfg: float = 4.5,
    size: int = 1024,
    text: str = "a painting of a lighthouse at dusk",
    negative: str = "",
    guider: bool = False,
) -> dict[str, Any]:
    """ComfyUI's SD3.5 example with separate files: UNETLoader (sd3.5_large), TripleCLIPLoader,
    ModelSamplingSD3, two CLIPTextEncodes, EmptySD3LatentImage into KSampler; with
    ``guider`` the sampling is CFGGuider + RandomNoise + KSamplerSelect + BasicScheduler into
    SamplerCustomAdvanced instead (the sampler keeps KSampler's id 3)."""
    nodes = [
        ui_node(4, "UNETLoader", ["sd3.5_large.safetensors", "default"],
                outputs=[("MODEL", "MODEL", [1])], pos=(0, 100)),
        ui_node(11, "TripleCLIPLoader",
                ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"],
                outputs=[("CLIP", "CLIP", [3, 5])], pos=(0, 300)),
        ui_node(13, "ModelSamplingSD3", [3.0], inputs=[("model", "MODEL", 1)],
                outputs=[("MODEL", "MODEL", [10, 11] if guider else [10])], pos=(400, 0)),
        ui_node(6, "CLIPTextEncode", [text], inputs=[("clip", "CLIP", 3)],
                outputs=[("CONDITIONING", "CONDITIONING", [4])], pos=(400, 150)),
        ui_node(7, "CLIPTextEncode", [negative], inputs=[("clip", "CLIP", 5)],
                outputs=[("CONDITIONING", "CONDITIONING", [6])], pos=(400, 400)),
        ui_node(5, "EmptySD3LatentImage", [size, size, 1], outputs=[("LATENT", "LATENT", [2])],
                pos=(400, 600)),
        ui_node(8, "VAEDecode", [], inputs=[("samples", "LATENT", 7), ("vae", "VAE", 8)],
                outputs=[("IMAGE", "IMAGE", [9])], pos=(1200, 100)),
        ui_node(9, "SaveImage", ["ComfyUI"], inputs=[("images", "IMAGE", 9)], pos=(1450, 100)),
        ui_node(15, "VAELoader", ["sd35_vae.safetensors"], outputs=[("VAE", "VAE", [8])],
                pos=(800, 500)),
    ]  # fmt: skip
    links = [
        [1, 4, 0, 13, 0, "MODEL"],
        [2, 5, 0, 3, 4 if guider else 3, "LATENT"],
        [3, 11, 0, 6, 0, "CLIP"],
        [5, 11, 0, 7, 0, "CLIP"],
        [7, 3, 0, 8, 0, "LATENT"],
        [8, 15, 0, 8, 1, "VAE"],
        [9, 8, 0, 9, 0, "IMAGE"],
    ]
    if not guider:
        nodes.append(
            ui_node(3, "KSampler", [seed, "fixed", steps, cfg, "euler", "sgm_uniform", 1],
                    inputs=[("model", "MODEL", 10), ("positive", "CONDITIONING", 4),
                            ("negative", "CONDITIONING", 6), ("latent_image", "LATENT", 2)],
                    outputs=[("LATENT", "LATENT", [7])], pos=(800, 100))
        )  # fmt: skip
        links += [[10, 13, 0, 3, 0, "MODEL"], [4, 6, 0, 3, 1, "CONDITIONING"],
                  [6, 7, 0, 3, 2, "CONDITIONING"]]  # fmt: skip
        return _ui_file(nodes, links)
    nodes += [
        ui_node(20, "CFGGuider", [cfg], inputs=[("model", "MODEL", 10),
                ("positive", "CONDITIONING", 4), ("negative", "CONDITIONING", 6)],
                outputs=[("GUIDER", "GUIDER", [21])], pos=(800, 0)),
        ui_node(21, "RandomNoise", [seed, "fixed"], outputs=[("NOISE", "NOISE", [22])],
                pos=(800, 200)),
        ui_node(22, "KSamplerSelect", ["dpmpp_2m"], outputs=[("SAMPLER", "SAMPLER", [23])],
                pos=(800, 300)),
        ui_node(23, "BasicScheduler", ["karras", steps, 1.0], inputs=[("model", "MODEL", 11)],
                outputs=[("SIGMAS", "SIGMAS", [24])], pos=(800, 400)),
        ui_node(3, "SamplerCustomAdvanced", [], inputs=[("noise", "NOISE", 22),
                ("guider", "GUIDER", 21), ("sampler", "SAMPLER", 23), ("sigmas", "SIGMAS", 24),
                ("latent_image", "LATENT", 2)],
                outputs=[("output", "LATENT", [7]), ("denoised_output", "LATENT", [])],
                pos=(1000, 100)),
    ]  # fmt: skip
    links += [
        [10, 13, 0, 20, 0, "MODEL"], [11, 13, 0, 23, 0, "MODEL"],
        [4, 6, 0, 20, 1, "CONDITIONING"], [6, 7, 0, 20, 2, "CONDITIONING"],
        [21, 20, 0, 3, 1, "GUIDER"], [22, 21, 0, 3, 0, "NOISE"],
        [23, 22, 0, 3, 2, "SAMPLER"], [24, 23, 0, 3, 3, "SIGMAS"],
    ]  # fmt: skip
    return _ui_file(nodes, links)
