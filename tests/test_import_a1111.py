"""A1111 / Forge generation parameters ("infotext") open as a Studio workflow: every field
maps to a node param or is kept in a note and reported; models are found by name or by
A1111's short hash; an imported studio-tiny infotext makes the image Studio's txt2img makes."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.errors import WorkflowFileError
from studio.graph.importers import a1111
from studio.graph.importers.a1111 import (
    import_infotext,
    looks_like_infotext,
    map_sampler,
    model_finder,
    parse_infotext,
)
from studio.graph.seeds import SeedControl, seed_control
from studio.library import installed_registry
from studio.modelfiles import ModelFiles
from studio.settings import Settings

FULL = """masterpiece, a (red cat:1.2) <lora:outline:0.7>,
sitting on a [chair] <lora:gone:0.5>
Negative prompt: blurry, lowres,
bad hands
Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, \
Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE: none, \
Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, Hires steps: 10, \
Hires upscaler: Latent (bicubic), Lora hashes: "outline: 0123456789ab, gone: ba9876543210", \
ADetailer prompt: "a face, smiling: yes", Emphasis: Original, Version: v1.10.0"""


@pytest.fixture(scope="module")
def registry():
    return installed_registry()


def nodes_of(wf, type_id):
    return [n for n in wf.nodes if n.type == type_id]


def one(wf, type_id):
    (node,) = nodes_of(wf, type_id)
    return node


def source_of(wf, node, input_name):
    link = wf.link_into(node.id, input_name)
    return wf.get_node(link.source) if link else None


def write_model(root, kind, name, content: bytes) -> str:
    path = root / kind / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return hashlib.sha256(content).hexdigest()


# -- parsing ---------------------------------------------------------------------------------


def test_parse_splits_prompt_negative_and_params_in_order():
    info = parse_infotext(FULL)
    assert info.prompt == "masterpiece, a (red cat:1.2),\nsitting on a [chair]"
    assert info.negative == "blurry, lowres,\nbad hands"
    assert list(info.params)[:4] == ["Steps", "Sampler", "Schedule type", "CFG scale"]
    assert info.params["Size"] == "512x768"
    # JSON-quoted values keep their commas and colons
    assert info.params["Lora hashes"] == "outline: 0123456789ab, gone: ba9876543210"
    assert info.params["ADetailer prompt"] == "a face, smiling: yes"
    assert info.loras == [("outline", 0.7, 0.7), ("gone", 0.5, 0.5)]


def test_parse_without_negative_and_lora_with_two_strengths():
    info = parse_infotext(
        'a cat <lora:x:0.4:0.9> <lora:y>\nSteps: 4, Seed: 2, TI hashes: "easyneg: abc, bad: def"'
    )
    assert info.prompt == "a cat"
    assert info.negative == ""
    assert info.loras == [("x", 0.9, 0.4), ("y", 1.0, 1.0)]
    assert info.embeddings == ["easyneg", "bad"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "just a prompt, nothing else",
        "a cat\nNegative prompt: dog",
        '{"nodes": [], "links": []}',
        "a cat\nSize: 512x512, Seed: 3",  # no Steps
        "a cat\nSteps: 20, this is not a pair, Seed: 1",
    ],
)
def test_text_that_is_not_infotext_is_a_clear_error(registry, text):
    with pytest.raises(WorkflowFileError) as err:
        import_infotext(text, registry, source="pasted.txt")
    assert "pasted.txt" in str(err.value)
    assert "generation parameters" in str(err.value)


def test_looks_like_infotext():
    assert looks_like_infotext(FULL + "\n")
    assert not looks_like_infotext("a cat\nSteps: 20")
    assert not looks_like_infotext('{"Steps: 1, Seed: 2": 3}\n{}')


# -- samplers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, schedule, expected",
    [
        ("Euler a", None, ("euler_ancestral", "normal")),
        ("Euler", None, ("euler", "normal")),
        ("DPM++ 2M Karras", None, ("dpmpp_2m", "karras")),
        ("DPM++ 2M", "Karras", ("dpmpp_2m", "karras")),
        # "Automatic" is the sampler's own default schedule (A1111 1.9 and later) ...
        ("DPM++ 2M", "Automatic", ("dpmpp_2m", "karras")),
        ("DPM++ 2M SDE", "Automatic", ("dpmpp_2m_sde", "exponential")),
        ("Euler a", "Automatic", ("euler_ancestral", "normal")),
        # ... while a name without a Schedule type (before 1.9) meant the plain schedule
        ("DPM++ 2M", None, ("dpmpp_2m", "normal")),
        ("LMS Karras", "Automatic", ("lms", "karras")),
        ("DPM++ 2M Karras", "Exponential", ("dpmpp_2m", "karras")),
        ("DPM++ SDE Karras", None, ("dpmpp_sde", "karras")),
        ("DPM++ 2M SDE", None, ("dpmpp_2m_sde", "normal")),
        ("DPM++ 2M SDE", "Exponential", ("dpmpp_2m_sde", "exponential")),
        ("DPM++ 3M SDE Exponential", None, ("dpmpp_3m_sde", "exponential")),
        ("DPM++ 3M SDE", "SGM Uniform", ("dpmpp_3m_sde", "sgm_uniform")),
        ("DPM2", None, ("dpm_2", "normal")),
        ("DPM2 a Karras", None, ("dpm_2_ancestral", "karras")),
        ("Heun", None, ("heun", "normal")),
        ("LMS Karras", None, ("lms", "karras")),
        ("DDIM", None, ("ddim", "normal")),
        ("PLMS", None, ("pndm", "normal")),
        ("UniPC", None, ("uni_pc", "normal")),
        ("LCM", None, ("lcm", "normal")),
        ("DPM++ 2M", "Beta", ("dpmpp_2m", "beta")),
    ],
)
def test_sampler_names_map_exactly(registry, name, schedule, expected):
    sampler, scheduler, notes = map_sampler(name, schedule)
    assert (sampler, scheduler) == expected
    assert notes == []
    spec = registry["sampler"]
    assert sampler in spec.input("sampler").choices
    assert scheduler in spec.input("scheduler").choices


@pytest.mark.parametrize(
    "name, schedule, expected",
    [
        ("DPM++ 2M SDE Heun", None, "dpmpp_2m_sde"),
        ("DPM fast", None, "dpmpp_2m"),
        ("Restart", None, "heun"),
        ("Some New Sampler", None, "euler"),
        ("Euler", "Align Your Steps", "euler"),
    ],
)
def test_samplers_studio_lacks_take_the_nearest_and_say_so(registry, name, schedule, expected):
    sampler, scheduler, notes = map_sampler(name, schedule)
    assert sampler == expected
    assert notes and any("Studio has no" in n for n in notes)
    assert sampler in registry["sampler"].input("sampler").choices
    assert scheduler in registry["sampler"].input("scheduler").choices


def test_every_sampler_in_the_table_is_one_studio_has(registry):
    choices = registry["sampler"].input("sampler").choices
    schedulers = registry["sampler"].input("scheduler").choices
    for mapping in a1111.SAMPLERS.values():
        assert mapping.sampler in choices
    for mapping in a1111.SCHEDULES.values():
        assert mapping.scheduler in schedulers


def test_studio_own_infotext_names_round_trip():
    # what nodes/image.py writes into Studio's PNGs
    assert map_sampler("Euler a", "Sgm uniform")[:2] == ("euler_ancestral", "sgm_uniform")
    assert map_sampler("DEIS")[:2] == ("deis", "normal")
    assert map_sampler("DDPM")[:2] == ("ddpm", "normal")


# -- the whole workflow ------------------------------------------------------------------------


def test_full_infotext_maps_every_field(registry):
    result = import_infotext(FULL, registry, source="cat.png")
    wf = result.workflow
    assert result.kind == "a1111"
    ckpt = one(wf, "load_checkpoint")
    assert ckpt.params["ckpt_name"] == "v1-5-pruned-emaonly"  # no finder: as written
    pos = next(n for n in nodes_of(wf, "text_encode") if n.title == "Prompt")
    neg = next(n for n in nodes_of(wf, "text_encode") if n.title == "Negative prompt")
    assert pos.params == {
        "text": "masterpiece, a (red cat:1.2),\nsitting on a [chair]",
        "clip_skip": 2,
    }
    assert neg.params == {"text": "blurry, lowres,\nbad hands", "clip_skip": 2}
    latent = one(wf, "empty_latent")
    assert (latent.params["width"], latent.params["height"]) == (512, 768)

    first, second = sorted(nodes_of(wf, "sampler"), key=lambda n: n.params["denoise"])[::-1]
    assert second.title == "Sampler (hires pass)"
    assert source_of(wf, first, "latent").id == latent.id
    assert {k: first.params[k] for k in ("seed", "steps", "cfg", "sampler", "scheduler")} == {
        "seed": 1234,
        "steps": 25,
        "cfg": 6.5,
        "sampler": "dpmpp_2m",
        "scheduler": "karras",
    }
    assert first.params["denoise"] == 1.0
    assert seed_control(wf, first.id, "seed") is SeedControl.FIXED
    # hires fix: latent upscale x2 (bicubic), then 10 steps at denoise 0.45
    up = source_of(wf, second, "latent")
    assert up.type == "latent_upscale"
    assert up.params == {"scale_by": 2.0, "method": "bicubic"}
    assert source_of(wf, up, "latent").id == first.id
    # A1111 runs 10 steps, the last of a 10 / 0.45 = 22-step schedule: so does Studio
    assert second.params["steps"] == 22
    assert int(second.params["steps"] * second.params["denoise"]) == 10
    assert "runs the same 10" in wf.layout.notes[0].text
    assert second.params["seed"] == 1234 and second.params["sampler"] == "dpmpp_2m"
    decode = one(wf, "vae_decode")
    assert source_of(wf, decode, "latent").id == second.id
    assert source_of(wf, decode, "vae").id == ckpt.id
    assert source_of(wf, one(wf, "save_image"), "images").id == decode.id

    # LoRAs chained between the checkpoint and everything that uses the model
    loras = nodes_of(wf, "load_lora")
    assert [n.params["lora_name"] for n in loras] == ["outline", "gone"]
    assert source_of(wf, loras[0], "model").id == ckpt.id
    assert source_of(wf, loras[1], "clip").id == loras[0].id
    assert source_of(wf, first, "model").id == loras[1].id
    assert source_of(wf, pos, "clip").id == loras[1].id
    assert loras[0].params["strength_model"] == 0.7

    (note,) = wf.layout.notes
    assert "cat.png" in note.text and "v1.10.0" in note.text
    assert "ADetailer prompt: a face, smiling: yes" in note.text
    assert "Emphasis: Original" in note.text
    assert any("ADetailer prompt" in r for r in result.report)
    assert any("Emphasis" in r for r in result.report)
    # mapped fields are not reported as unused
    assert not any("'Steps'" in r or "'Clip skip'" in r for r in result.report)


def test_imported_workflow_is_valid_and_saves(registry, tmp_path):
    from studio.engine import Engine
    from studio.graph.fileformat import load_workflow

    settings = Settings(models_root=str(tmp_path / "models"))
    text = (
        "a cat <lora:studio-tiny-outline:0.5>\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, "
        "Seed: 1, Size: 64x64, Model: studio-tiny, Denoising strength: 0.5, Hires upscale: 2, "
        "Hires upscaler: studio-tiny-x4"
    )
    find = model_finder(ModelFiles(settings))
    wf = import_infotext(text, registry, source="x", find_model=find).workflow
    assert one(wf, "load_upscale_model").params["model_name"] == "studio-tiny-x4.safetensors"
    assert one(wf, "load_lora").params["lora_name"] == "studio-tiny-outline.safetensors"
    assert Engine(registry, settings=settings).validate(wf) == []
    wf.save(tmp_path / "imported.json")
    again = load_workflow(tmp_path / "imported.json", registry)
    assert len(again.nodes) == len(wf.nodes) and len(again.links) == len(wf.links)
    assert again.layout.notes[0].text == wf.layout.notes[0].text


def test_denoising_strength_without_hires_is_reported_and_kept(registry):
    text = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, Denoising strength: 0.6"
    result = import_infotext(text, registry, source="x")
    (sampler,) = nodes_of(result.workflow, "sampler")
    assert sampler.params["denoise"] == 1.0
    assert any("img2img" in r for r in result.report)
    assert "Denoising strength: 0.6" in result.workflow.layout.notes[0].text


def test_unsupported_prompt_syntax_is_reported(registry):
    text = (
        "a cat BREAK a dog AND a bird, [summer:winter:0.5], [red|blue] hat\n"
        "Negative prompt: ugly BREAK bad\n"
        "Steps: 20, Seed: 1, Size: 64x64"
    )
    report = import_infotext(text, registry, source="x").report
    assert any("Prompt: BREAK" in r for r in report)
    assert any("Negative prompt: BREAK" in r for r in report)
    assert any("AND" in r for r in report)
    assert any("prompt editing" in r for r in report)
    assert any("alternating" in r for r in report)
    plain = import_infotext(
        "a (cat:1.2) [dog] \\(literal\\)\nNegative prompt: plain words\nSteps: 20, Seed: 1, RNG: CPU, Model: m",
        registry,
        source="x",
    )
    # weights are read, only their strength differs from A1111's: said once, for the prompt
    assert len(plain.report) == 1 and plain.report[0].startswith("Prompt: weights")
    escaped = import_infotext(
        "a \\(cat\\)\nSteps: 20, Seed: 1, RNG: CPU, Model: m", registry, source="x"
    )
    assert escaped.report == []


# -- hires with an upscale model ----------------------------------------------------------------


HIRES_MODEL = (
    "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 9, Size: 64x64, "
    "Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: {}, Model: tiny"
)


def test_hires_with_a_found_upscale_model_upscales_pixels(registry, tmp_path):
    write_model(tmp_path, "upscale_models", "4x-UltraSharp.pth", b"u" * 100)
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    result = import_infotext(
        HIRES_MODEL.format("4x-UltraSharp"), registry, source="x", find_model=find
    )
    wf = result.workflow
    assert one(wf, "load_upscale_model").params["model_name"] == "4x-UltraSharp.pth"
    scale = one(wf, "scale_image")
    assert (scale.params["mode"], scale.params["width"], scale.params["height"]) == (
        "size",
        128,
        128,
    )
    assert source_of(wf, scale, "image").type == "upscale_image"
    second = next(n for n in nodes_of(wf, "sampler") if n.params["denoise"] < 1)
    assert source_of(wf, second, "latent").type == "vae_encode"
    assert not nodes_of(wf, "latent_upscale")


def test_hires_with_a_missing_upscale_model_falls_back_to_latent(registry, tmp_path):
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    result = import_infotext(
        HIRES_MODEL.format("R-ESRGAN 4x+"), registry, source="x", find_model=find
    )
    wf = result.workflow
    assert not nodes_of(wf, "load_upscale_model")
    assert one(wf, "latent_upscale").params["scale_by"] == 2.0
    assert any("R-ESRGAN 4x+" in r and "not found" in r for r in result.report)
    assert any("latent" in r for r in result.report)


def test_hires_resize_gives_the_target_size(registry):
    text = HIRES_MODEL.format("Lanczos").replace("Hires upscale: 2", "Hires resize: 96x96")
    wf = import_infotext(text, registry, source="x").workflow
    scale = one(wf, "scale_image")
    assert (scale.params["width"], scale.params["height"], scale.params["method"]) == (
        96,
        96,
        "lanczos",
    )
    assert not nodes_of(wf, "load_upscale_model")


# -- finding models ------------------------------------------------------------------------------


def test_checkpoint_found_by_name_with_or_without_extension_and_subfolder(registry, tmp_path):
    write_model(tmp_path, "checkpoints", "sd15/dreamshaper_8.safetensors", b"d" * 64)
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    for written in (
        "dreamshaper_8",
        "dreamshaper_8.safetensors",
        "sd15/dreamshaper_8",
        "sd15\\dreamshaper_8",
    ):
        text = f"a cat\nSteps: 20, Seed: 1, Model: {written}"
        result = import_infotext(text, registry, source="x", find_model=find)
        assert (
            one(result.workflow, "load_checkpoint").params["ckpt_name"]
            == "sd15/dreamshaper_8.safetensors"
        )
        assert not any("not found" in r for r in result.report)


def test_checkpoint_found_by_short_hash_when_renamed(registry, tmp_path, monkeypatch):
    write_model(tmp_path, "checkpoints", "other.safetensors", b"o" * 50)
    digest = write_model(tmp_path, "checkpoints", "renamed.safetensors", b"r" * 70)
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    text = f"a cat\nSteps: 20, Seed: 1, Model hash: {digest[:10]}, Model: original-name"
    result = import_infotext(text, registry, source="x", find_model=find)
    assert one(result.workflow, "load_checkpoint").params["ckpt_name"] == "renamed.safetensors"
    # hashes are remembered: a second lookup reads no file
    calls = []
    monkeypatch.setattr(a1111, "file_sha256", lambda p: calls.append(p) or "0" * 64)
    assert find("checkpoints", "original-name", digest[:10]) == "renamed.safetensors"
    assert calls == []


def test_name_lookup_hashes_nothing(registry, tmp_path, monkeypatch):
    write_model(tmp_path, "checkpoints", "a.safetensors", b"a" * 10)
    calls = []
    monkeypatch.setattr(a1111, "file_sha256", lambda p: calls.append(p) or "0" * 64)
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    assert find("checkpoints", "a", "1234567890") == "a.safetensors"
    assert calls == []


def test_legacy_8_digit_hash(tmp_path):
    content = bytes(range(256)) * (0x110000 // 256 + 1)
    write_model(tmp_path, "checkpoints", "old.ckpt", content)
    legacy = hashlib.sha256(content[0x100000:0x110000]).hexdigest()[:8]
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    assert find("checkpoints", "gone", legacy) == "old.ckpt"


def test_missing_checkpoint_is_reported_with_its_name_and_hash(registry, tmp_path):
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    text = "a cat\nSteps: 20, Seed: 1, Model hash: 0123456789, Model: nowhere"
    result = import_infotext(text, registry, source="x", find_model=find)
    assert one(result.workflow, "load_checkpoint").params["ckpt_name"] == "nowhere"
    assert any("'nowhere'" in r and "0123456789" in r for r in result.report)


def test_loras_found_and_missing(registry, tmp_path):
    write_model(tmp_path, "loras", "styles/outline_v2.safetensors", b"l" * 30)
    digest = write_model(tmp_path, "loras", "hashed.safetensors", b"h" * 30)
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    text = (
        "a cat <lora:outline_v2:0.8>, <lora:renamed:0.6>, <lora:absent:1>\n"
        f'Steps: 20, Seed: 1, Lora hashes: "renamed: {digest[:12]}, absent: 000000000000"'
    )
    result = import_infotext(text, registry, source="x", find_model=find)
    wf = result.workflow
    loras = nodes_of(wf, "load_lora")
    assert [n.params["lora_name"] for n in loras] == [
        "styles/outline_v2.safetensors",
        "hashed.safetensors",
        "absent",
    ]
    assert [n.bypass for n in loras] == [False, False, True]
    assert "absent" in loras[2].title
    pos = next(n for n in nodes_of(wf, "text_encode") if n.title == "Prompt")
    assert pos.params["text"] == "a cat"
    assert any("'absent'" in r for r in result.report)
    assert not any("outline_v2" in r for r in result.report)


def test_bare_embedding_names_become_embedding_references(registry):
    text = (
        "a cat, easynegative\nNegative prompt: (badhand:1.2), bad-handsome\n"
        'Steps: 20, Seed: 1, TI hashes: "EasyNegative: 1234abcd, missing: 99aa"'
    )
    result = import_infotext(
        text,
        registry,
        source="x",
        embedding_names=["EasyNegative.safetensors", "neg/badhand.pt", "unused.pt"],
    )
    texts = {n.title: n.params["text"] for n in nodes_of(result.workflow, "text_encode")}
    assert texts["Prompt"] == "a cat, embedding:EasyNegative"
    assert texts["Negative prompt"] == "(embedding:neg/badhand:1.2), bad-handsome"
    assert [r for r in result.report if "embedding" in r] == [
        "embedding 'missing' is not in the embeddings folder; the name stays in the prompt "
        "as plain words"
    ]


# -- end to end on the embedded model --------------------------------------------------------


def test_imported_studio_tiny_infotext_gives_the_txt2img_image(registry, tmp_path):
    torch = pytest.importorskip("torch")
    from studio.engine import Engine
    from studio.recipes import txt2img

    prompt = "a large yellow triangle on a purple background, right"
    settings = Settings(models_root=str(tmp_path / "models"), output_dir=str(tmp_path / "out"))
    text = (
        f"{prompt}\nSteps: 6, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 64x64, "
        "Model: studio-tiny, RNG: CPU, Version: v1.10.0"
    )
    result = import_infotext(
        text, registry, source="x", find_model=model_finder(ModelFiles(settings))
    )
    assert result.report == []
    engine = Engine(registry, settings=settings)
    imported = engine.run(result.workflow)
    assert imported.ok, imported.errors
    decode = one(result.workflow, "vae_decode")

    wf, ids = txt2img(registry, "studio-tiny", prompt, seed=42, steps=6, cfg=7.0, sampler="euler")
    expected = Engine(registry, settings=settings).run(wf)
    assert expected.ok, expected.errors
    a = imported.outputs[decode.id]["image"]
    b = expected.outputs[ids["decode"]]["image"]
    assert a.shape == (1, 64, 64, 3)
    assert torch.equal(a, b)
    # and a different seed would have given a different image
    wf.set_param(ids["sampler"], "seed", 43)
    other = Engine(registry, settings=settings).run(wf)
    assert not torch.equal(other.outputs[ids["decode"]]["image"], a)


# -- the app: Ctrl+V of an infotext -------------------------------------------------------------

PASTED = (
    "a large red circle on a blue background, left <lora:studio-tiny-outline:0.5>\n"
    "Negative prompt: blurry\n"
    "Steps: 12, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 77, Size: 64x64, "
    "Model: studio-tiny, Face restoration: CodeFormer"
)


@pytest.fixture
def app_window(make_window, registry, tmp_path):
    pytest.importorskip("PySide6")
    from studio.graph.workflow import Workflow

    settings = Settings(models_root=str(tmp_path / "models"), output_dir=str(tmp_path / "out"))
    wf = Workflow(registry)
    wf.add_node("empty_latent")
    return make_window(wf, studio_settings=settings)


def paste_text(w, text):
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    QApplication.clipboard().setText(text)
    QTest.keyClick(w.view, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)


def test_pasting_an_infotext_opens_it_as_a_new_unsaved_document(app_window, tmp_path):
    w = app_window
    w.path = tmp_path / "mine.json"  # the current document had a file
    paste_text(w, PASTED)
    wf = w.controller.wf
    assert one(wf, "load_checkpoint").params["ckpt_name"] == "studio-tiny"
    assert one(wf, "load_lora").params["lora_name"] == "studio-tiny-outline.safetensors"
    sampler = one(wf, "sampler")
    assert (sampler.params["seed"], sampler.params["sampler"], sampler.params["scheduler"]) == (
        77,
        "dpmpp_2m",
        "karras",
    )
    assert "Face restoration: CodeFormer" in wf.layout.notes[0].text
    assert "clipboard" in wf.layout.notes[0].text
    assert w.path is None and w.is_dirty  # closing asks to save it
    assert "note" in w.statusBar().currentMessage()
    assert w.scene is not None and len(w.scene.items()) > 0


def test_pasting_an_infotext_asks_about_unsaved_changes_first(app_window):
    from studio.app.window import UnsavedAnswer

    w = app_window
    before = w.controller.wf
    w.controller.add_node("empty_latent", (100.0, 100.0))
    assert w.is_dirty
    asked = []
    w.ask_unsaved = lambda: asked.append(1) or UnsavedAnswer.CANCEL
    paste_text(w, PASTED)
    assert asked and w.controller.wf is before  # cancelled: the document stays
    assert not nodes_of(w.controller.wf, "load_checkpoint")
    w.ask_unsaved = lambda: UnsavedAnswer.DISCARD
    paste_text(w, PASTED)
    assert nodes_of(w.controller.wf, "load_checkpoint")


def test_pasting_parameters_that_cannot_be_read_says_why(app_window):
    w = app_window
    before = w.controller.wf
    paste_text(w, "a cat\nSteps: 20, Seed: 1, and then some words")
    assert w.controller.wf is before
    message = w.statusBar().currentMessage()
    assert "clipboard" in message and "generation parameters" in message


def test_pasting_other_text_changes_nothing(app_window):
    w = app_window
    before = w.controller.wf
    n = len(before.nodes)
    paste_text(w, "a cat\nSteps: 20")  # no Seed: not taken for parameters
    paste_text(w, "just some words")
    assert w.controller.wf is before and len(before.nodes) == n


def test_importer_needs_neither_qt_nor_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('PySide6', 'shiboken6', 'torch', 'diffusers'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from studio.graph.importers.a1111 import import_infotext\n"
        "from studio.library import installed_registry\n"
        "r = import_infotext('a cat\\nSteps: 3, Seed: 1', installed_registry(), source='x')\n"
        "print(len(r.workflow.nodes), 'nodes')\n"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "7 nodes" in proc.stdout


def test_safetensors_lora_found_by_the_hash_a1111_writes(registry, tmp_path):
    # A1111 hashes a .safetensors LoRA without its header (metadata edits keep the hash)
    header = b'{"__metadata__": {"ss_output_name": "style"}}  '
    data = bytes(range(200))
    write_model(
        tmp_path,
        "loras",
        "downloaded_style.safetensors",
        len(header).to_bytes(8, "little") + header + data,
    )
    short = hashlib.sha256(data).hexdigest()[:12]
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    text = f'a cat <lora:style:0.9>\nSteps: 20, Seed: 1, Lora hashes: "style: {short}"'
    result = import_infotext(text, registry, source="x", find_model=find)
    lora = one(result.workflow, "load_lora")
    assert lora.params["lora_name"] == "downloaded_style.safetensors" and not lora.bypass
    assert lora.params["strength_model"] == 0.9 and lora.params["strength_clip"] == 0.9


def test_vae_found_is_used_for_decoding_and_a_missing_one_is_reported(registry, tmp_path):
    write_model(tmp_path, "vae", "vae-ft-mse-840000.safetensors", b"v" * 20)
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    text = "a cat\nSteps: 20, Seed: 1, Model: m, VAE: vae-ft-mse-840000.safetensors"
    wf = import_infotext(text, registry, source="x", find_model=find).workflow
    vae = one(wf, "load_vae")
    assert vae.params["vae_name"] == "vae-ft-mse-840000.safetensors"
    assert source_of(wf, one(wf, "vae_decode"), "vae").id == vae.id

    result = import_infotext(text.replace("vae-ft", "other"), registry, source="x", find_model=find)
    assert not nodes_of(result.workflow, "load_vae")
    decode = one(result.workflow, "vae_decode")
    assert source_of(result.workflow, decode, "vae").type == "load_checkpoint"
    assert any("VAE" in r and "not found" in r for r in result.report)
    assert "VAE: other-mse-840000.safetensors" in result.workflow.layout.notes[0].text


def test_values_that_are_not_numbers_are_reported_not_fatal(registry):
    text = "a cat\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1, Size: big, Clip skip: 40"
    result = import_infotext(text, registry, source="x")
    sampler = one(result.workflow, "sampler")
    assert sampler.params["steps"] == 20
    latent = one(result.workflow, "empty_latent")
    assert (latent.params["width"], latent.params["height"]) == (512, 512)
    assert any("Steps" in r for r in result.report)
    assert any("Size" in r for r in result.report)
    assert any("Clip skip 40" in r for r in result.report)
    assert "Steps: many" in result.workflow.layout.notes[0].text


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos", "4x-UltraSharp"])
def test_imported_nodes_do_not_overlap_on_the_canvas(registry, tmp_path, upscaler):
    write_model(tmp_path, "upscale_models", "4x-UltraSharp.pth", b"u" * 10)
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    text = "a cat <lora:a:1> <lora:b:1>\n" + HIRES_MODEL.format(upscaler).split("\n")[1]
    wf = import_infotext(text, registry, source="x", find_model=find).workflow
    spots = [tuple(wf.layout.nodes[n.id].pos) for n in wf.nodes]
    assert len(set(spots)) == len(spots)
    # left to right: every link goes to a column at or after its source's
    for link in wf.links:
        assert wf.layout.nodes[link.source].pos[0] <= wf.layout.nodes[link.target].pos[0]
    # a sampler (tall: it shows its picture) has its column to itself
    for s in nodes_of(wf, "sampler"):
        x = wf.layout.nodes[s.id].pos[0]
        assert [n.id for n in wf.nodes if wf.layout.nodes[n.id].pos[0] == x] == [s.id]


@pytest.mark.parametrize("upscaler", ["Latent", "studio-tiny-x4"])
def test_imported_hires_fix_runs_on_studio_tiny(registry, tmp_path, upscaler):
    pytest.importorskip("torch")
    from studio.engine import Engine

    settings = Settings(models_root=str(tmp_path / "models"), output_dir=str(tmp_path / "out"))
    text = (
        "a large white square on a green background, center\n"
        "Steps: 4, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Model: studio-tiny, "
        f"Denoising strength: 0.5, Hires upscale: 2, Hires steps: 2, Hires upscaler: {upscaler}"
    )
    find = model_finder(ModelFiles(settings))
    result = import_infotext(text, registry, source="x", find_model=find)
    if upscaler != "Latent" and nodes_of(result.workflow, "latent_upscale"):
        pytest.skip("the studio-tiny-x4 upscale model is not in resources/models")
    run = Engine(registry, settings=settings).run(result.workflow)
    assert run.ok, run.errors
    decodes = nodes_of(result.workflow, "vae_decode")
    final = next(
        d
        for d in decodes
        if source_of(result.workflow, d, "latent").type == "sampler"
        and source_of(result.workflow, d, "latent").params["denoise"] < 1
    )
    image = run.outputs[final.id]["image"]
    assert image.shape == (1, 128, 128, 3)


def test_a_prompt_without_tags_is_kept_exactly():
    text = "a  cat ,\n  (on a mat) ,\nNegative prompt:  dog ,,\nSteps: 20, Seed: 1"
    info = parse_infotext(text)
    assert info.prompt == "a  cat ,\n  (on a mat) ,"
    assert info.negative == "dog ,,"


def test_a_long_line_of_words_is_refused_quickly():
    import time

    start = time.monotonic()
    with pytest.raises(WorkflowFileError):
        parse_infotext("a cat\nSteps: 20, Seed: 1, " + "word " * 40_000)
    assert time.monotonic() - start < 2.0
    info = parse_infotext('a cat\nSteps: 20, X: "a, b: c", Y: 2 ')
    assert info.params == {"Steps": "20", "X": "a, b: c", "Y": "2"}


@pytest.mark.parametrize("steps", [1, 2, 7, 10, 20, 30, 50])
@pytest.mark.parametrize("denoise", [0.05, 0.2, 0.3, 0.33, 0.45, 0.5, 0.55, 0.7, 0.99, 1.0])
def test_hires_schedule_runs_exactly_the_hires_steps(steps, denoise):
    total, fraction = a1111.hires_schedule(steps, denoise)
    assert 0 < fraction <= 1
    assert min(int(total * fraction), total) == steps  # what Studio's Sampler runs
    assert total == int(steps / min(denoise, 0.999))  # A1111's schedule length


def test_hires_pass_with_its_own_prompts(registry):
    text = (
        "a cat\nNegative prompt: dog\n"
        "Steps: 20, Seed: 1, Model: m, Denoising strength: 0.5, Hires upscale: 1.5, "
        'Hires upscaler: Latent, Hires prompt: "a cat, (sharp details:1.1)", '
        'Hires negative prompt: "dog", Hires sampler: DPM++ 2M, Hires schedule type: Karras, '
        "Hires CFG Scale: 4"
    )
    result = import_infotext(text, registry, source="x")
    wf = result.workflow
    first, second = sorted(nodes_of(wf, "sampler"), key=lambda n: n.params["denoise"])[::-1]
    hr = source_of(wf, second, "positive")
    assert hr.title == "Hires prompt" and hr.params["text"] == "a cat, (sharp details:1.1)"
    # the same negative prompt as the first pass: the first pass's encoder serves both
    assert source_of(wf, second, "negative").id == source_of(wf, first, "negative").id
    assert source_of(wf, first, "positive").params["text"] == "a cat"
    assert (second.params["sampler"], second.params["scheduler"], second.params["cfg"]) == (
        "dpmpp_2m",
        "karras",
        4.0,
    )
    assert (first.params["sampler"], first.params["cfg"]) == ("euler_ancestral", 7.0)
    assert not any("Hires prompt" in r and "not used" in r for r in result.report)


def test_finder_refresh_sees_new_files_and_keeps_hashes(tmp_path, monkeypatch):
    digest = write_model(tmp_path, "checkpoints", "a.safetensors", b"a" * 10)
    find = model_finder(ModelFiles(Settings(models_root=str(tmp_path))))
    assert find("checkpoints", "b", None) is None
    assert find("checkpoints", "renamed", digest[:10]) == "a.safetensors"
    write_model(tmp_path, "checkpoints", "b.safetensors", b"b" * 10)
    assert find("checkpoints", "b", None) is None  # listed once ...
    find.refresh()
    assert find("checkpoints", "b", None) == "b.safetensors"  # ... until refreshed
    calls = []
    real = a1111.file_sha256
    monkeypatch.setattr(a1111, "file_sha256", lambda p: calls.append(p.name) or real(p))
    assert find("checkpoints", "renamed", digest[:10]) == "a.safetensors"
    assert calls == []  # a.safetensors was hashed before the refresh


# -- Studio's own images: the parameters Save Image writes come back as the same graph -----------


def _studio_parameters(registry, sampler, scheduler):
    from types import SimpleNamespace

    from nodes.image import generation_parameters
    from studio.recipes import txt2img

    wf, ids = txt2img(
        registry,
        "studio-tiny",
        "a large red circle,\non a blue background: left",
        negative="blurry, dark",
        seed=123,
        steps=9,
        cfg=5.5,
        sampler=sampler,
        scheduler=scheduler,
        output="save_image",
    )
    wf.set_param(ids["pos"], "clip_skip", 2)
    wf.set_param(ids["neg"], "clip_skip", 2)
    ctx = SimpleNamespace(workflow=wf, node_id=ids["out"], run_info={})
    return wf, ids, generation_parameters(ctx, (64, 64))


def test_studio_parameters_come_back_with_every_sampler_and_scheduler(registry):
    spec = registry["sampler"]
    from studio.graph.importers.comfyui_map import COMFY_ONLY_SAMPLERS

    for sampler in spec.input("sampler").choices:
        for scheduler in spec.input("scheduler").choices:
            if sampler in COMFY_ONLY_SAMPLERS and not scheduler.startswith("comfy_"):
                continue  # does not run, so no image carries it
            _, _, text = _studio_parameters(registry, sampler, scheduler)
            result = import_infotext(text, registry, source="studio.png")
            got = one(result.workflow, "sampler").params
            assert (got["sampler"], got["scheduler"]) == (sampler, scheduler), text
            assert not any("Studio has no" in r for r in result.report), text


def test_studio_parameters_come_back_as_the_same_graph(registry):
    wf, ids, text = _studio_parameters(registry, "dpmpp_2m", "karras")
    result = import_infotext(text, registry, source="studio.png")
    back = result.workflow
    want = wf.get_node(ids["sampler"]).params
    got = one(back, "sampler").params
    assert got == want
    assert one(back, "load_checkpoint").params["ckpt_name"] == "studio-tiny"
    texts = {n.title: n.params for n in nodes_of(back, "text_encode")}
    assert texts["Prompt"] == {
        "text": "a large red circle,\non a blue background: left",
        "clip_skip": 2,
    }
    assert texts["Negative prompt"] == {"text": "blurry, dark", "clip_skip": 2}
    assert result.report == []  # Studio's own noise is Studio's: nothing to warn about


def test_a_hires_schedule_too_long_for_the_sampler_is_reported(registry):
    text = (
        "a cat\nSteps: 20, Seed: 1, Model: m, Denoising strength: 0.01, Hires upscale: 2, "
        "Hires steps: 30, Hires upscaler: Latent"
    )
    result = import_infotext(text, registry, source="x")
    second = next(n for n in nodes_of(result.workflow, "sampler") if n.params["denoise"] < 1)
    assert second.params["steps"] == 30 and second.params["denoise"] == 0.01
    assert any("3000-step schedule" in r for r in result.report)
    assert registry["sampler"].input("steps").max == a1111.MAX_STEPS


def test_an_image_from_the_advanced_sampler_carries_its_parameters_too(registry):
    from types import SimpleNamespace

    from nodes.image import generation_parameters
    from studio.graph.workflow import Workflow

    wf = Workflow(registry)
    ckpt = wf.add_node("load_checkpoint", {"ckpt_name": "studio-tiny"})
    pos = wf.add_node("text_encode", {"text": "a red circle"})
    neg = wf.add_node("text_encode", {"text": ""})
    latent = wf.add_node("empty_latent", {"width": 64, "height": 64})
    sampler = wf.add_node(
        "sampler_advanced", {"seed": 77, "steps": 12, "cfg": 4.0, "sampler": "heun"}
    )
    out = wf.add_node("save_image")
    for src, port, dst, inp in [
        (ckpt, "clip", pos, "clip"),
        (ckpt, "clip", neg, "clip"),
        (ckpt, "model", sampler, "model"),
        (pos, "conditioning", sampler, "positive"),
        (neg, "conditioning", sampler, "negative"),
        (latent, "latent", sampler, "latent"),
    ]:
        wf.connect(src.id, port, dst.id, inp)
    decode = wf.add_node("vae_decode")
    wf.connect(sampler.id, "latent", decode.id, "latent")
    wf.connect(ckpt.id, "vae", decode.id, "vae")
    wf.connect(decode.id, "image", out.id, "images")
    ctx = SimpleNamespace(workflow=wf, node_id=out.id, run_info={})
    text = generation_parameters(ctx, (64, 64))
    assert text.startswith("a red circle\n")
    assert "Steps: 12" in text and "Seed: 77" in text and "Sampler: Heun" in text


# -- hostile text: only the documented error, a saveable workflow, bounded time ------------------

_FUZZ_BASE = (
    "a (red:1.2) circle <lora:outline:0.8>\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 64x64, Model: m, "
    "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Denoising strength: 0.5, "
    'Lora hashes: "outline: 0123456789ab", Clip skip: 2'
)
_FUZZ_VALUES = [
    "9" * 5000,
    "1e400",
    "-1e400",
    "nan",
    "inf",
    "-0",
    "0x10",
    "",
    '"',
    '"a,b:c"',
    "\ud800",
    "99999999999x99999999999",
    "18446744073709551615",
    "-5",
    "1.5e308",
    "<lora:x:inf>",
]


def _mutate(data, text: str) -> str:
    lines = text.split("\n")
    fields = lines[-1].split(", ")
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(fields) - 1))
        key = fields[i].split(": ", 1)[0]
        value = data.draw(st.sampled_from(_FUZZ_VALUES) | st.text(max_size=40))
        fields[i] = f"{key}: {value}"
    lines[-1] = ", ".join(fields)
    if data.draw(st.booleans()):
        lines[0] = data.draw(st.text(max_size=200))
    return "\n".join(lines)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_parameters_import_saveably_or_raise_the_documented_error(data):
    from studio.graph.fileformat import dumps_workflow

    text = _mutate(data, _FUZZ_BASE)
    try:
        result = import_infotext(text, _FUZZ_REGISTRY, source="x.png")
    except WorkflowFileError:
        return
    dumps_workflow(result.workflow)  # whatever imports can be saved


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_random_text_imports_or_raises_the_documented_error(text):
    try:
        import_infotext(text + "\nSteps: 20, Seed: 1", _FUZZ_REGISTRY, source="x")
        import_infotext(text, _FUZZ_REGISTRY, source="x")
    except WorkflowFileError:
        pass


_FUZZ_REGISTRY = installed_registry()


@pytest.mark.parametrize(
    "name, schedule, expected",
    [
        ("DPM++ 2S a", None, "comfy_normal"),
        ("DPM++ 2S a Karras", None, "comfy_karras"),
        ("DPM++ 2S a", "Automatic", "comfy_karras"),
        ("DPM++ 2S a", "Exponential", "comfy_exponential"),
        ("DPM++ 2S a", "Beta", "comfy_beta"),
    ],
)
def test_dpmpp_2s_a_is_comfyuis_with_a_comfyui_schedule(registry, name, schedule, expected):
    sampler, scheduler, notes = map_sampler(name, schedule)
    assert (sampler, scheduler) == ("dpmpp_2s_ancestral", expected)
    assert any("ComfyUI's schedules" in n for n in notes)
    assert scheduler in registry["sampler"].input("scheduler").choices
