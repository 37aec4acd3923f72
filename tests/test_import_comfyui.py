"""Opening ComfyUI workflows (UI format v0.4 and v1, API format, their PNGs) and writing
Studio workflows as ComfyUI prompts. The ComfyUI files are written here from the
documented formats (docs/importing.md, FORMATS.md)."""

from __future__ import annotations

import copy
import json

import pytest
from comfyui_files import txt2img_api, txt2img_ui, ui_node

from studio.errors import WorkflowFileError
from studio.graph.fileformat import dumps_workflow, load_workflow, loads_workflow, open_any
from studio.graph.importers.comfyui import import_comfyui
from studio.graph.importers.comfyui_export import export_comfyui_api
from studio.graph.seeds import seed_control
from studio.library import installed_registry


@pytest.fixture(scope="module")
def reg():
    return installed_registry()


def problems_of(wf):
    from studio.engine.validate import plan_workflow

    return [str(p) for p in plan_workflow(wf, wf.registry).problems]


def rich_ui() -> dict:
    """txt2img with a group, a note, a reroute on the VAE link, a primitive feeding the
    seeds of two samplers (one muted), a bypassed LoRA and a custom node."""
    data = txt2img_ui()
    nodes = {n["id"]: n for n in data["nodes"]}
    # A bypassed LoRA between the checkpoint and the sampler's model.
    data["nodes"].append(
        ui_node(
            11,
            "LoraLoader",
            ["detail.safetensors", 0.8, 1.0],
            mode=4,
            inputs=[("model", "MODEL", 1), ("clip", "CLIP", None)],
            outputs=[("MODEL", "MODEL", [10]), ("CLIP", "CLIP", [])],
            pos=(300, 600),
        )
    )
    data["links"][0] = [1, 4, 0, 11, 0, "MODEL"]
    data["links"].append([10, 11, 0, 3, 0, "MODEL"])
    # The VAE goes through a reroute.
    data["nodes"].append(
        ui_node(
            12,
            "Reroute",
            inputs=[("", "*", 8)],
            outputs=[("", "VAE", [11])],
            pos=(1000, 500),
            size=(75, 26),
        )
    )
    data["links"][7] = [8, 4, 2, 12, 0, "VAE"]
    data["links"].append([11, 12, 0, 8, 1, "VAE"])
    # A second, muted sampler; a primitive feeds both seeds.
    sampler = nodes[3]
    sampler["inputs"].append(
        {"name": "seed", "type": "INT", "link": 20, "widget": {"name": "seed"}}
    )
    second = ui_node(
        13,
        "KSampler",
        [5, "fixed", 30, 6.5, "euler_ancestral", "karras", 0.5],
        inputs=[
            ("model", "MODEL", 21),
            ("positive", "CONDITIONING", None),
            ("negative", "CONDITIONING", None),
            ("latent_image", "LATENT", None),
            ("seed", "INT", 22),
        ],
        widget_inputs=("seed",),
        outputs=[("LATENT", "LATENT", [])],
        mode=2,
        pos=(900, 700),
        title="Second pass",
    )
    data["nodes"].append(second)
    data["links"].append([21, 4, 0, 13, 0, "MODEL"])
    data["nodes"].append(
        ui_node(
            20,
            "PrimitiveNode",
            [1234, "increment"],
            outputs=[("INT", "INT", [20, 22])],
            pos=(600, 900),
            title="Seed",
        )
    )
    data["links"] += [[20, 20, 0, 3, 4, "INT"], [22, 20, 0, 13, 4, "INT"]]
    # A custom node's node, a note and a group.
    data["nodes"].append(
        ui_node(
            15,
            "IPAdapterApply",
            [0.8, "original", 0.0, 1.0],
            inputs=[("model", "MODEL", 23)],
            outputs=[("MODEL", "MODEL", [])],
            pos=(400, 900),
        )
    )
    data["links"].append([23, 4, 0, 15, 0, "MODEL"])
    data["nodes"].append(ui_node(30, "Note", ["remember the seed"], pos=(0, 0), size=(200, 80)))
    data["groups"] = [{"title": "Prompts", "bounding": [400, 100, 500, 400], "color": "#3f789e"}]
    return data


def test_a_ui_v04_workflow_opens_with_ids_flags_layout_and_placeholders(reg, tmp_path):
    path = tmp_path / "comfy.json"
    path.write_text(json.dumps(rich_ui()))
    result = open_any(path, reg)
    wf = result.workflow
    assert result.kind == "comfyui-ui"
    assert wf.path is None  # saving asks where: the ComfyUI file is never overwritten
    types = {n.id: n.type for n in wf.nodes}
    assert types == {
        "4": "load_checkpoint",
        "6": "text_encode",
        "7": "text_encode",
        "5": "empty_latent",
        "3": "sampler",
        "8": "vae_decode",
        "9": "save_image",
        "11": "load_lora",
        "13": "sampler",
        "15": "comfyui.IPAdapterApply",
    }  # no Reroute, PrimitiveNode or Note nodes
    sampler = wf.get_node("3")
    assert sampler.params["seed"] == 1234  # the primitive's value, written into both seeds
    assert wf.get_node("13").params["seed"] == 1234
    assert seed_control(wf, "3", "seed") == "increment"
    assert (sampler.params["steps"], sampler.params["cfg"]) == (20, 7.0)
    assert wf.get_node("13").mute and wf.get_node("13").title == "Second pass"
    assert wf.get_node("11").bypass and wf.get_node("11").params["strength_model"] == 0.8
    assert wf.get_node("13").params["scheduler"] == "comfy_karras"  # ComfyUI's own karras
    # The reroute is a point on the link, which goes straight from the checkpoint.
    vae_link = wf.link_into("8", "vae")
    assert (vae_link.source, vae_link.output) == ("4", "vae")
    assert wf.layout.reroutes[vae_link.id] == [(1037.5, 513.0)]
    assert wf.layout.nodes["3"].pos == (863.0, 186.0)
    assert [f.title for f in wf.layout.frames] == ["Prompts"]
    # the group grew downwards to hold its two prompts at Studio's size (tidy_layout)
    assert wf.layout.frames[0].rect == (400.0, 100.0, 500.0, 625.0)
    texts = [n.text for n in wf.layout.notes]
    assert "remember the seed" in texts
    (report_note,) = [t for t in texts if t.startswith("Imported from comfy.json")]
    (note,) = [n for n in wf.layout.notes if n.id == "import-report"]
    tops = [n.pos[1] for n in wf.layout.notes if n is not note]
    tops += [f.rect[1] for f in wf.layout.frames] + [nl.pos[1] for nl in wf.layout.nodes.values()]
    assert note.pos[1] + note.size[1] <= min(tops)  # above everything: it hides nothing
    assert "IPAdapterApply" in report_note
    assert any("'seed' = 1234 written in from 'Seed'" in r for r in result.report)
    # The placeholder keeps what ComfyUI wrote, and validation says where it came from.
    comfy = wf.get_node("15").extra["comfyui"]
    assert comfy["class_type"] == "IPAdapterApply"
    assert comfy["widgets_values"] == [0.8, "original", 0.0, 1.0]
    assert "'IPAdapterApply' comes from a ComfyUI extension Studio does not have" in "\n".join(
        problems_of(wf)
    )
    # Saved as a Studio file, it loads again with the same content.
    text = dumps_workflow(wf)
    assert dumps_workflow(loads_workflow(text, registry=reg)) == text


def test_the_imported_ids_are_what_studio_run_set_addresses(reg):
    from studio.cli import parse_set

    wf = import_comfyui(txt2img_ui(), reg, source="x.json").workflow
    assert parse_set(wf, "3.seed=7") == ("3", "seed", 7)


def test_a_ui_v1_workflow_with_link_objects_and_a_subgraph_is_flattened(reg):
    data = txt2img_ui()
    data["version"] = 1
    data["links"] = [
        {
            "id": lk[0],
            "origin_id": lk[1],
            "origin_slot": lk[2],
            "target_id": lk[3],
            "target_slot": lk[4],
            "type": lk[5],
        }
        for lk in data["links"]
    ]
    # Decode and save live in a subgraph: input 0 the latent, input 1 the VAE.
    data["nodes"] = [n for n in data["nodes"] if n["id"] not in (8, 9)]
    data["links"] = [lk for lk in data["links"] if lk["target_id"] not in (8, 9)]
    sub_id = "6b0e7a4c-0000-4000-8000-000000000001"
    data["nodes"].append(
        ui_node(
            50, sub_id, [], inputs=[("samples", "LATENT", 7), ("vae", "VAE", 8)], pos=(1200, 200)
        )
    )
    data["links"] += [
        {
            "id": 7,
            "origin_id": 3,
            "origin_slot": 0,
            "target_id": 50,
            "target_slot": 0,
            "type": "LATENT",
        },
        {
            "id": 8,
            "origin_id": 4,
            "origin_slot": 2,
            "target_id": 50,
            "target_slot": 1,
            "type": "VAE",
        },
    ]
    data["definitions"] = {
        "subgraphs": [
            {
                "id": sub_id,
                "name": "Decode and save",
                "version": 1,
                "inputs": [{"name": "samples", "type": "LATENT"}, {"name": "vae", "type": "VAE"}],
                "outputs": [],
                "nodes": [
                    ui_node(
                        1,
                        "VAEDecode",
                        [],
                        inputs=[("samples", "LATENT", 1), ("vae", "VAE", 2)],
                        outputs=[("IMAGE", "IMAGE", [3])],
                        pos=(100, 100),
                    ),
                    ui_node(
                        2, "SaveImage", ["sub"], inputs=[("images", "IMAGE", 3)], pos=(400, 100)
                    ),
                ],
                "links": [
                    {
                        "id": 1,
                        "origin_id": -10,
                        "origin_slot": 0,
                        "target_id": 1,
                        "target_slot": 0,
                        "type": "LATENT",
                    },
                    {
                        "id": 2,
                        "origin_id": -10,
                        "origin_slot": 1,
                        "target_id": 1,
                        "target_slot": 1,
                        "type": "VAE",
                    },
                    {
                        "id": 3,
                        "origin_id": 1,
                        "origin_slot": 0,
                        "target_id": 2,
                        "target_slot": 0,
                        "type": "IMAGE",
                    },
                ],
            }
        ]
    }
    result = import_comfyui(data, reg, source="v1.json")
    wf = result.workflow
    assert {n.id: n.type for n in wf.nodes}["50:1"] == "vae_decode"
    assert wf.get_node("50:2").params["filename_prefix"] == "sub"
    latent = wf.link_into("50:1", "latent")
    assert (latent.source, latent.output) == ("3", "latent")
    assert (wf.link_into("50:1", "vae").source, wf.link_into("50:2", "images").source) == (
        "4",
        "50:1",
    )
    assert wf.layout.nodes["50:1"].pos == (1200.0, 200.0)  # the subgraph node's place
    assert any("'Decode and save'" in r and "flattened" in r for r in result.report)
    assert problems_of(wf) == []


def test_an_api_prompt_is_laid_out_sources_left_of_sinks(reg):
    result = import_comfyui(txt2img_api(), reg, source="prompt.json")
    wf = result.workflow
    assert result.kind == "comfyui-api"
    x = {nid: nl.pos[0] for nid, nl in wf.layout.nodes.items()}
    for lk in wf.links:
        assert x[lk.source] < x[lk.target], lk
    same_column = [nl.pos for nid, nl in wf.layout.nodes.items() if x[nid] == x["6"]]
    assert len({p[1] for p in same_column}) == len(same_column)  # none on top of another
    assert wf.get_node("6").params["text"] == "a cat"
    assert wf.get_node("4").title == ""  # ComfyUI's own titles are not kept as user titles
    assert problems_of(wf) == []


@pytest.mark.parametrize(
    ("control", "expected"),
    [
        ("fixed", "fixed"),
        ("increment", "increment"),
        ("decrement", "decrement"),
        ("randomize", "randomize"),
        (True, "randomize"),  # old files: the "random seed" checkbox
        (False, "fixed"),
    ],
)
def test_the_seed_control_after_generate_becomes_studios(reg, control, expected):
    wf = import_comfyui(txt2img_ui(seed=77, control=control), reg, source="x.json").workflow
    assert wf.get_node("3").params["seed"] == 77
    assert seed_control(wf, "3", "seed") == expected


def test_values_outside_studios_ranges_are_reported_not_clamped(reg):
    data = txt2img_ui(steps=0)
    data["nodes"][4]["widgets_values"][4] = "dpm_fast"
    result = import_comfyui(data, reg, source="x.json")
    sampler = result.workflow.get_node("3")
    assert sampler.params["steps"] == 0 and sampler.params["sampler"] == "dpm_fast"
    assert any("'steps'" in r for r in result.report)
    assert any("'sampler'" in r for r in result.report)
    assert any("steps" in p for p in problems_of(result.workflow))


def test_clip_set_last_layer_becomes_the_text_encodes_clip_skip(reg):
    data = txt2img_api()
    data["10"] = {
        "class_type": "CLIPSetLastLayer",
        "inputs": {"stop_at_clip_layer": -2, "clip": ["4", 1]},
    }
    data["6"]["inputs"]["clip"] = ["10", 0]
    data["7"]["inputs"]["clip"] = ["10", 0]
    wf = import_comfyui(data, reg, source="x.json").workflow
    assert not wf.has_node("10")
    assert wf.get_node("6").params["clip_skip"] == 2 and wf.get_node("7").params["clip_skip"] == 2
    assert wf.link_into("6", "clip").source == "4"
    out = export_comfyui_api(wf)
    csl = out["6"]["inputs"]["clip"][0]
    assert out[csl]["class_type"] == "CLIPSetLastLayer"
    assert out[csl]["inputs"] == {"stop_at_clip_layer": -2, "clip": ["4", 1]}


def test_torch_compile_model_is_taken_out_and_its_model_flows_past(reg):
    data = txt2img_api()
    data["10"] = {
        "class_type": "TorchCompileModel",
        "inputs": {"model": ["4", 0], "backend": "inductor"},
    }
    data["3"]["inputs"]["model"] = ["10", 0]
    result = import_comfyui(data, reg, source="x.json")
    wf = result.workflow
    assert not wf.has_node("10")
    assert wf.link_into("3", "model").source == "4"
    assert any("TorchCompileModel (10) was removed" in line for line in result.report)
    assert not problems_of(wf)


# -- PNGs ---------------------------------------------------------------------------------------


def write_png(path, chunks: dict[str, str]) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, text in chunks.items():
        info.add_text(key, text)
    Image.new("RGB", (8, 8), "purple").save(path, pnginfo=info)


def test_a_comfyui_png_opens_its_workflow_chunk_before_its_prompt(reg, tmp_path):
    path = tmp_path / "ComfyUI_00001_.png"
    api = txt2img_api(seed=99)
    write_png(path, {"prompt": json.dumps(api), "workflow": json.dumps(txt2img_ui(seed=5))})
    result = open_any(path, reg)
    assert result.kind == "comfyui-ui"
    assert result.workflow.get_node("3").params["seed"] == 5
    assert result.workflow.path is None  # Ctrl+S never writes over the image
    only_prompt = tmp_path / "prompt.png"
    write_png(only_prompt, {"prompt": json.dumps(api)})
    wf = load_workflow(only_prompt, reg)
    assert wf.get_node("3").params["seed"] == 99
    broken = tmp_path / "broken.png"
    write_png(broken, {"workflow": "{not json", "prompt": json.dumps(api)})
    result = open_any(broken, reg)
    assert result.kind == "comfyui-api" and "prompt chunk was imported" in result.report[0]
    (note,) = [n for n in result.workflow.layout.notes if n.id == "import-report"]
    assert "prompt chunk was imported" in note.text


def test_studio_validate_reads_a_comfyui_png(tmp_path, capsys):
    from studio.cli import main

    data = rich_ui()
    path = tmp_path / "custom.png"
    write_png(path, {"workflow": json.dumps(data)})
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr().out
    assert "'IPAdapterApply' comes from a ComfyUI extension Studio does not have" in out


def test_a_png_with_a1111_parameters_opens_as_their_workflow(reg, tmp_path):
    from studio.graph.fileformat import open_any

    path = tmp_path / "a1111.png"
    write_png(path, {"parameters": "a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 64x64"})
    opened = open_any(path, reg)
    assert opened.kind == "a1111" and opened.workflow.path is None
    (sampler,) = [n for n in opened.workflow.nodes if n.type == "sampler"]
    assert sampler.params["seed"] == 1 and sampler.params["steps"] == 20
    assert sampler.params["sampler"] == "euler_ancestral"


# -- bad input ------------------------------------------------------------------------------


def test_bad_comfyui_files_get_errors_naming_the_file_and_node(reg, tmp_path):
    cases = []
    neither = {"hello": 1}
    cases.append((neither, "nor a ComfyUI workflow"))
    missing = txt2img_ui()
    missing["links"].append([40, 77, 0, 9, 0, "IMAGE"])
    cases.append((missing, "link 40 joins node 77, which is not in the file"))
    short = txt2img_ui()
    short["nodes"][4]["widgets_values"] = [1, "fixed", 20]
    cases.append((short, "node 3 (KSampler) has 3 widget values"))
    api = txt2img_api()
    api["8"]["inputs"]["vae"] = ["44", 2]
    cases.append((api, "node 8 (VAEDecode): input 'vae' is linked to node 44"))
    slot = txt2img_api()
    slot["8"]["inputs"]["vae"] = ["4", 7]
    cases.append((slot, "output slot 7 of node 4 (CheckpointLoaderSimple)"))
    for i, (data, expected) in enumerate(cases):
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(WorkflowFileError) as info:
            load_workflow(path, reg)
        assert str(path) in str(info.value) and expected in str(info.value)


# -- export -------------------------------------------------------------------------------------


def test_api_to_studio_to_api_gives_the_same_graph(reg):
    api = txt2img_api(seed=123)
    api["10"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "lora_name": "detail.safetensors",
            "strength_model": 0.7,
            "strength_clip": 0.5,
            "model": ["4", 0],
            "clip": ["4", 1],
        },
    }
    api["3"]["inputs"]["model"] = ["10", 0]
    api["11"] = {
        "class_type": "LatentUpscaleBy",
        "inputs": {"upscale_method": "bilinear", "scale_by": 1.5, "samples": ["3", 0]},
    }
    api["12"] = {
        "class_type": "ImageScale",
        "inputs": {
            "upscale_method": "lanczos",
            "width": 256,
            "height": 0,
            "crop": "disabled",
            "image": ["8", 0],
        },
    }
    api["13"] = {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}}
    api["14"] = {"class_type": "IPAdapterApply", "inputs": {"weight": 0.8, "model": ["10", 0]}}
    wf = import_comfyui(copy.deepcopy(api), reg, source="p.json").workflow
    out = export_comfyui_api(wf)
    assert {k: (v["class_type"], v["inputs"]) for k, v in out.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in api.items()
    }


def test_studios_own_txt2img_exports_and_studio_only_nodes_are_named(reg, tmp_path, capsys):
    from studio.cli import main
    from studio.modelfiles import RESOURCES

    out = tmp_path / "api.json"
    assert (
        main(
            [
                "export",
                str(RESOURCES / "workflows" / "txt2img.json"),
                "--to",
                "comfyui-api",
                str(out),
            ]
        )
        == 0
    )
    prompt = json.loads(out.read_text())
    assert sorted(v["class_type"] for v in prompt.values()) == sorted(
        [
            "CheckpointLoaderSimple",
            "CLIPTextEncode",
            "CLIPTextEncode",
            "EmptyLatentImage",
            "KSampler",
            "VAEDecode",
            "SaveImage",
        ]
    )
    # ... and it imports back into the same Studio graph, except that ComfyUI's 'normal'
    # is ComfyUI's own spacing: it comes back as comfy_normal, not Studio's diffusers one.
    back = import_comfyui(prompt, reg, source="api.json").workflow
    orig = load_workflow(RESOURCES / "workflows" / "txt2img.json", reg)
    (sampler,) = [n for n in orig.nodes if n.type == "sampler"]
    assert sampler.params["scheduler"] == "normal"
    sampler.params["scheduler"] = "comfy_normal"
    assert sorted((n.type, sorted(n.params.items())) for n in back.nodes) == sorted(
        (n.type, sorted(n.params.items())) for n in orig.nodes
    )
    wf = load_workflow(RESOURCES / "workflows" / "txt2img.json", reg)
    crop = wf.add_node("crop_to_mask", title="My crop")
    wf.save(tmp_path / "studio_only.json")
    assert (
        main(
            [
                "export",
                str(tmp_path / "studio_only.json"),
                "--to",
                "comfyui-api",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"My crop ({crop.id}): 'crop_to_mask' has no ComfyUI counterpart" in err
    assert not (tmp_path / "x.json").exists()


# -- end to end -----------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path, user_settings_file):
    torch = pytest.importorskip("torch")
    from studio.engine import Engine
    from studio.settings import Settings

    torch.set_num_threads(1)
    settings = user_settings_file(
        Settings(output_dir=str(tmp_path / "out"), input_dir=str(tmp_path / "in"), device="cpu")
    )
    return Engine(installed_registry(), settings=settings)


def test_an_imported_comfyui_txt2img_makes_studios_own_image(reg, engine, tmp_path):
    import numpy as np

    from studio.modelfiles import RESOURCES

    own = load_workflow(RESOURCES / "workflows" / "txt2img.json", reg)
    for n in own.nodes:
        if n.type == "sampler":  # the same graph built by hand, with ComfyUI's schedule
            n.params.update(seed=11, steps=4, cfg=7.0, scheduler="comfy_normal")
    text = own.find_node("Prompt").params["text"]
    imported = import_comfyui(
        txt2img_ui(seed=11, steps=4, cfg=7.0, text=text), reg, source="c.json"
    )
    images = []
    for wf in (own, imported.workflow):
        result = engine.run(wf)
        assert result.ok, result.errors
        (image,) = result.images
        images.append(np.asarray(image.convert("RGB")).astype(int))
    assert images[0].shape == images[1].shape == (64, 64, 3)
    assert (images[0] == images[1]).all()
    assert images[0].std() > 10


def test_the_importer_needs_neither_qt_nor_torch():
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    from test_core_api import BLOCKER

    root = Path(__file__).resolve().parent.parent
    code = BLOCKER + textwrap.dedent(
        """
        import sys
        sys.path.insert(0, 'tests')
        from comfyui_files import txt2img_api
        from studio.graph.importers.comfyui import import_comfyui
        from studio.graph.importers.comfyui_export import export_comfyui_api
        from studio.library import installed_registry
        wf = import_comfyui(txt2img_api(), installed_registry(), source='p.json').workflow
        print(len(export_comfyui_api(wf)), 'nodes')
        assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'PySide6')]
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "7 nodes" in proc.stdout


# -- whatever comes in, only the documented error comes out ----------------------------------


def _v1_file() -> dict:
    data = txt2img_ui()
    data["version"] = 1
    data["links"] = [
        {
            "id": lk[0],
            "origin_id": lk[1],
            "origin_slot": lk[2],
            "target_id": lk[3],
            "target_slot": lk[4],
            "type": lk[5],
            "parentId": 1,
        }
        for lk in data["links"]
    ]
    data["extra"] = {"reroutes": [{"id": 1, "pos": [10, 20]}]}
    data["definitions"] = {"subgraphs": [{"id": "s", "nodes": [], "links": [], "inputs": []}]}
    data["nodes"].append(ui_node(60, "s", [], inputs=[("x", "LATENT", None)]))
    return data


def _widgets(data, where, value):
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if isinstance(nodes, list) and nodes and isinstance(nodes[where % len(nodes)], dict):
        wv = nodes[where % len(nodes)].setdefault("widgets_values", [])
        if isinstance(wv, list) and wv:
            wv[(where // 3) % len(wv)] = value
    elif isinstance(data, dict) and data:
        node = data[sorted(data)[where % len(data)]]
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict) and node["inputs"]:
            inputs = node["inputs"]
            inputs[sorted(inputs)[(where // 3) % len(inputs)]] = value


def _comfy_link(data, where, value):
    links = data.get("links") if isinstance(data, dict) else None
    if isinstance(links, list) and links:
        lk = links[where % len(links)]
        if isinstance(lk, list):
            lk[(where // 5) % len(lk)] = value
        elif isinstance(lk, dict):
            lk[sorted(lk)[(where // 5) % len(lk)]] = value


def test_mutated_comfyui_files_import_or_raise_the_documented_error(reg):
    from hypothesis import given
    from hypothesis import strategies as st
    from test_core_fuzz import FUZZ, _add_key, _delete, _duplicate, _put_literals, _replace, values

    from studio.engine.validate import plan_workflow

    files = [rich_ui(), _v1_file(), txt2img_api()]
    mutations = [
        _widgets,
        _widgets,
        _comfy_link,
        _comfy_link,
        _replace,
        _delete,
        _add_key,
        _duplicate,
    ]

    @FUZZ
    @given(
        st.sampled_from(range(len(files))),
        st.lists(
            st.tuples(st.sampled_from(mutations), st.integers(0, 10**6), values),
            min_size=1,
            max_size=3,
        ),
    )
    def check(which, steps):
        data = copy.deepcopy(files[which])
        for mutate, where, value in steps:
            mutate(data, where, value)
        try:
            text = _put_literals(json.dumps(data, ensure_ascii=False))
        except (UnicodeEncodeError, ValueError, RecursionError):
            return
        try:
            wf = loads_workflow(text, registry=reg, path="fuzz.json")
        except WorkflowFileError as exc:
            assert "fuzz.json" in str(exc)
            return
        plan_workflow(wf, reg)
        saved = dumps_workflow(wf)
        assert dumps_workflow(loads_workflow(saved, registry=reg)) == saved

    check()


# -- the app ----------------------------------------------------------------------------------


def test_the_app_opens_a_dropped_comfyui_png_and_exports_comfyui_api(
    make_window, reg, tmp_path, monkeypatch
):
    pytest.importorskip("PySide6")
    from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    import studio.app.window as window_module

    png = tmp_path / "ComfyUI_00002_.png"
    write_png(png, {"workflow": json.dumps(txt2img_ui(seed=8))})
    w = make_window(registry=reg)
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(png))])
    left, none = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    target = w.view.viewport()
    enter = QDragEnterEvent(QPoint(200, 200), Qt.DropAction.CopyAction, md, left, none)
    QApplication.sendEvent(target, enter)
    QApplication.sendEvent(
        target, QDropEvent(QPointF(200, 200), Qt.DropAction.CopyAction, md, left, none)
    )
    wf = w.controller.wf
    assert wf.get_node("3").params["seed"] == 8  # the workflow, not a Load Image of the PNG
    assert not [n for n in wf.nodes if n.type == "load_image"]
    assert w.path is None  # saving asks where
    assert "Imported ComfyUI_00002_.png: every node mapped" in w.statusBar().currentMessage()

    out = tmp_path / "exported.json"
    monkeypatch.setattr(
        window_module.QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), "")
    )
    (action,) = [a for a in w.menuBar().actions()[0].menu().actions() if "ComfyUI API" in a.text()]
    action.trigger()
    prompt = json.loads(out.read_text())
    assert prompt["3"]["class_type"] == "KSampler" and prompt["3"]["inputs"]["seed"] == 8


def test_core_types_studio_lacks_say_why_and_gpu_samplers_are_reported(reg):
    data = txt2img_api()
    data["3"]["inputs"]["sampler_name"] = "dpmpp_2m_sde_gpu"
    data["20"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": ["5", 0], "filename_prefix": "latents/x"},
    }
    result = import_comfyui(data, reg, source="x.json")
    wf = result.workflow
    assert wf.get_node("3").params["sampler"] == "dpmpp_2m_sde"
    assert any("'dpmpp_2m_sde_gpu' became 'dpmpp_2m_sde'" in r for r in result.report)
    assert any(
        "'SaveLatent' is a ComfyUI node Studio does not map: Studio neither writes nor reads "
        "ComfyUI's .latent files yet" in p
        for p in problems_of(wf)
    )
    del data["20"]
    wf = import_comfyui(data, reg, source="x.json").workflow
    assert export_comfyui_api(wf)["3"]["inputs"]["sampler_name"] == "dpmpp_2m_sde"
    wf.get_node("3").params["sampler"] = "pndm"
    with pytest.raises(WorkflowFileError, match="sampler 'pndm' is not one ComfyUI has"):
        export_comfyui_api(wf)


def test_a_ui_workflow_exports_as_the_prompt_comfyui_queues_for_it(reg):
    ui = txt2img_ui(seed=5, steps=12, cfg=6.5, text="a cat")
    api = txt2img_api(seed=5, steps=12, cfg=6.5)
    out = export_comfyui_api(import_comfyui(ui, reg, source="x.json").workflow)
    assert {k: (v["class_type"], v["inputs"]) for k, v in out.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in api.items()
    }


def test_studio_run_sets_a_param_of_an_imported_workflow_by_comfyuis_id(
    tmp_path, user_settings_file, capsys
):
    pytest.importorskip("torch")
    from PIL import Image

    from studio.cli import main
    from studio.settings import Settings

    user_settings_file(Settings(input_dir=str(tmp_path / "in"), device="cpu"))
    path = tmp_path / "comfy.json"
    path.write_text(json.dumps(txt2img_ui(steps=2)))
    out = tmp_path / "out"
    assert (
        main(["run", str(path), "--set", "3.seed=7", "--set", "5.width=32", "--out", str(out)]) == 0
    )
    (png,) = out.rglob("*.png")
    with Image.open(png) as im:
        assert im.size == (32, 64)
        saved = json.loads(im.info["studio_workflow"])
    assert {n["id"]: n["params"].get("seed") for n in saved["nodes"]}["3"] == 7
    assert path.read_text() == json.dumps(txt2img_ui(steps=2))  # the ComfyUI file is untouched


def test_nested_subgraphs_with_outputs_are_flattened(reg):
    """Decode lives in subgraph B inside subgraph A; A's output feeds the outer Save Image."""
    data = txt2img_ui()
    data["nodes"] = [n for n in data["nodes"] if n["id"] != 8]
    data["links"] = [lk for lk in data["links"] if 8 not in (lk[1], lk[3])]
    data["nodes"].append(
        ui_node(
            70,
            "A",
            [],
            inputs=[("samples", "LATENT", 7), ("vae", "VAE", 8)],
            outputs=[("IMAGE", "IMAGE", [9])],
            pos=(1200, 200),
        )
    )
    data["links"] += [
        [7, 3, 0, 70, 0, "LATENT"],
        [8, 4, 2, 70, 1, "VAE"],
        [9, 70, 0, 9, 0, "IMAGE"],
    ]

    def link(i, o, os_, t, ts):
        return {
            "id": i,
            "origin_id": o,
            "origin_slot": os_,
            "target_id": t,
            "target_slot": ts,
            "type": "*",
        }

    a = {
        "id": "A",
        "inputs": [{"name": "samples"}, {"name": "vae"}],
        "outputs": [{"name": "IMAGE"}],
        "nodes": [
            ui_node(
                1,
                "B",
                [],
                inputs=[("samples", "LATENT", 1), ("vae", "VAE", 2)],
                outputs=[("IMAGE", "IMAGE", [3])],
                pos=(0, 0),
            )
        ],
        "links": [link(1, -10, 0, 1, 0), link(2, -10, 1, 1, 1), link(3, 1, 0, -20, 0)],
    }
    b = {
        "id": "B",
        "inputs": [{"name": "samples"}, {"name": "vae"}],
        "outputs": [{"name": "IMAGE"}],
        "nodes": [
            ui_node(
                5,
                "VAEDecode",
                [],
                inputs=[("samples", "LATENT", 1), ("vae", "VAE", 2)],
                outputs=[("IMAGE", "IMAGE", [3])],
                pos=(0, 0),
            )
        ],
        "links": [link(1, -10, 0, 5, 0), link(2, -10, 1, 5, 1), link(3, 5, 0, -20, 0)],
    }
    data["definitions"] = {"subgraphs": [a, b]}
    wf = import_comfyui(data, reg, source="nested.json").workflow
    assert wf.get_node("70:1:5").type == "vae_decode"
    assert (wf.link_into("70:1:5", "latent").source, wf.link_into("70:1:5", "vae").source) == (
        "3",
        "4",
    )
    assert wf.link_into("9", "images").source == "70:1:5"
    assert problems_of(wf) == []
    a["nodes"][0]["type"] = "A"  # A inside A: refused, not a hang
    with pytest.raises(WorkflowFileError, match="nested more than 16 deep"):
        import_comfyui(data, reg, source="nested.json")


def test_the_advanced_sampler_conditioning_and_outpaint_nodes_map_both_ways(reg):
    api = txt2img_api(seed=5, steps=8)
    del api["3"]
    advanced = {
        "add_noise": "enable",
        "noise_seed": 5,
        "steps": 8,
        "cfg": 7.0,
        "sampler_name": "euler",
        "scheduler": "karras",
        "model": ["4", 0],
        "positive": ["21", 0],
        "negative": ["22", 0],
    }
    api["30"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            **advanced,
            "start_at_step": 0,
            "end_at_step": 5,
            "return_with_leftover_noise": "enable",
            "latent_image": ["5", 0],
        },
    }
    api["3"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            **advanced,
            "add_noise": "disable",
            "start_at_step": 5,
            "end_at_step": 10000,
            "return_with_leftover_noise": "disable",
            "latent_image": ["30", 0],
        },
    }
    api["20"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a dog", "clip": ["4", 1]}}
    api["21"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["23", 0]},
    }
    api["23"] = {
        "class_type": "ConditioningAverage",
        "inputs": {
            "conditioning_to_strength": 0.25,
            "conditioning_to": ["20", 0],
            "conditioning_from": ["6", 0],
        },
    }
    api["22"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["7", 0]}}
    api["24"] = {
        "class_type": "ImagePadForOutpaint",
        "inputs": {
            "left": 16,
            "top": 0,
            "right": 16,
            "bottom": 8,
            "feathering": 12,
            "image": ["8", 0],
        },
    }
    api["25"] = {"class_type": "PreviewImage", "inputs": {"images": ["24", 0]}}
    result = import_comfyui(copy.deepcopy(api), reg, source="p.json")
    wf = result.workflow
    assert problems_of(wf) == []
    first, second = wf.get_node("30"), wf.get_node("3")
    assert first.type == second.type == "sampler_advanced"
    assert first.params["add_noise"] is True and first.params["return_with_leftover_noise"] is True
    assert second.params["add_noise"] is False and second.params["start_at_step"] == 5
    assert wf.get_node("23").params["conditioning_to_strength"] == 0.25
    assert wf.get_node("24").params["feathering"] == 12
    out = export_comfyui_api(wf)
    assert {k: (v["class_type"], v["inputs"]) for k, v in out.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in api.items()
    }


def test_set_union_controlnet_type_imports_between_loader_and_apply_and_exports_back(reg):
    """ComfyUI's SetUnionControlNetType becomes Set Union ControlNet Type with its type and
    links kept (the mode numbering that differs from ComfyUI's reported), and exports back to
    the same prompt; the importer's Flux mode table is the node's."""
    from nodes.controlnet import FLUX_UNION_MODES, UNION_TYPES
    from studio.graph.importers import comfyui_map

    assert {
        k: v for k, v in FLUX_UNION_MODES.items() if k in comfyui_map._COMFY_UNION_NUMBERS
    } == comfyui_map._FLUX_UNION_MODES
    assert set(comfyui_map._COMFY_UNION_NUMBERS) < set(UNION_TYPES)
    api = txt2img_api()
    api["20"] = {
        "class_type": "ControlNetLoader",
        "inputs": {"control_net_name": "flux-union-pro.safetensors"},
    }
    api["21"] = {
        "class_type": "SetUnionControlNetType",
        "inputs": {"type": "depth", "control_net": ["20", 0]},
    }
    api["22"] = {"class_type": "LoadImage", "inputs": {"image": "depth.png"}}
    api["23"] = {
        "class_type": "ControlNetApplyAdvanced",
        "inputs": {
            "strength": 0.6,
            "start_percent": 0.0,
            "end_percent": 1.0,
            "positive": ["6", 0],
            "negative": ["7", 0],
            "control_net": ["21", 0],
            "image": ["22", 0],
            "vae": ["4", 2],
        },
    }
    api["3"]["inputs"]["positive"] = ["23", 0]
    api["3"]["inputs"]["negative"] = ["23", 1]
    result = import_comfyui(copy.deepcopy(api), reg, source="union.json")
    wf = result.workflow
    typed = wf.get_node("21")
    assert typed.type == "set_union_controlnet_type"
    assert typed.params["type"] == "depth"
    assert wf.link_into("21", "control_net").source == "20"
    assert wf.link_into("23", "control_net").source == "21"
    # ComfyUI hands a Flux union its SDXL-union number (1); Studio the model's depth mode (2)
    assert [line for line in result.report if "union type" in line] == [
        next(line for line in result.report if "'depth'" in line)
    ]
    assert "(2, InstantX's numbering)" in " ".join(result.report)
    out = export_comfyui_api(wf)
    assert out["21"]["class_type"] == "SetUnionControlNetType"
    assert out["21"]["inputs"] == api["21"]["inputs"]
