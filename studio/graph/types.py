"""The small nominal set of value types that flow along links."""

from __future__ import annotations

from enum import StrEnum


class ValueType(StrEnum):
    MODEL = "MODEL"
    CLIP = "CLIP"
    VAE = "VAE"
    CONDITIONING = "CONDITIONING"
    LATENT = "LATENT"
    IMAGE = "IMAGE"
    MASK = "MASK"
    CONTROL_NET = "CONTROL_NET"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    CLIP_VISION = "CLIP_VISION"
    CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
    STYLE_MODEL = "STYLE_MODEL"
    IPADAPTER = "IPADAPTER"
    INT = "INT"
    FLOAT = "FLOAT"
    STRING = "STRING"
    BOOLEAN = "BOOLEAN"
    CHOICE = "CHOICE"
    ANY = "ANY"  # only for frontend helpers such as reroutes before they are connected


#: Types whose values are edited on the node itself (widgets); others only arrive by link.
PARAM_TYPES = frozenset(
    {ValueType.INT, ValueType.FLOAT, ValueType.STRING, ValueType.BOOLEAN, ValueType.CHOICE}
)

#: Port colours shared by the canvas and generated docs (hex RGB).
TYPE_COLORS: dict[ValueType, str] = {
    ValueType.MODEL: "#b39ddb",
    ValueType.CLIP: "#ffd54f",
    ValueType.VAE: "#ef5350",
    ValueType.CONDITIONING: "#ffa726",
    ValueType.LATENT: "#f48fb1",
    ValueType.IMAGE: "#64b5f6",
    ValueType.MASK: "#81c784",
    ValueType.CONTROL_NET: "#4db6ac",
    ValueType.UPSCALE_MODEL: "#9575cd",
    ValueType.CLIP_VISION: "#a1887f",
    ValueType.CLIP_VISION_OUTPUT: "#8d6e63",
    ValueType.STYLE_MODEL: "#7986cb",
    ValueType.IPADAPTER: "#4fc3f7",
    ValueType.INT: "#aed581",
    ValueType.FLOAT: "#aed581",
    ValueType.STRING: "#e0e0e0",
    ValueType.BOOLEAN: "#90a4ae",
    ValueType.CHOICE: "#e0e0e0",
    ValueType.ANY: "#bdbdbd",
}


def can_connect(output_type: ValueType | str, input_type: ValueType | str) -> bool:
    """Whether a value of ``output_type`` may feed an input of ``input_type``.

    Types are nominal: equal names connect. INT may feed FLOAT (a widening every
    node editor allows); ANY connects to everything (reroutes, primitives).
    """
    out_t, in_t = ValueType(output_type), ValueType(input_type)
    if out_t == in_t or ValueType.ANY in (out_t, in_t):
        return True
    if out_t is ValueType.INT and in_t is ValueType.FLOAT:
        return True
    return out_t is ValueType.STRING and in_t is ValueType.CHOICE
