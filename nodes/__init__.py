"""The built-in node library, one module per family.

Modules here declare node specs at top level and import torch, diffusers and
friends only inside ``execute`` functions (or helpers called from them), so the
GUI and the validator can read every spec without loading torch.
"""

#: Modules of this package whose top-level NodeSpec objects are registered.
BUILTIN_MODULES: list[str] = [
    "utility",
    "mask",
    "upscale",
    "preprocess",
    "lora",
    "controlnet",
    "inpaint",
    "loaders",
    "dit_nodes",
    "redux_nodes",
    "ipadapter_nodes",
    "conditioning",
    "latent",
    "sampling",
    "image",
    "comfycore",
    "comfyops",
    "comfyimage",
    "merge",
]
