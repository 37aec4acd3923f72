"""Loading checkpoints: single files in the original layout, family detection, caching
of loads, and clear errors for bad input (tiny models, CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import diffusion_fixtures as fx  # noqa: E402

from studio.errors import NodeError  # noqa: E402
from studio.graph.workflow import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402

# Shared fixtures (a session's tiny models on disk, an engine pointed at them).
engine, models_root, tiny_parts = fx.engine, fx.models_root, fx.tiny_parts


def _loader_only(ckpt: str) -> tuple[Workflow, str]:
    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": ckpt}).id
    return wf, ck


def _loaded(engine, handle, component):
    from nodes.sdload import component_dtype

    src = handle.source
    dtype = component_dtype(type("C", (), {"dtype": torch.float32})(), src, component)
    return engine.models.use(src.key(component, dtype, "cpu"))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_file_loads_to_the_same_tensors(engine, tiny_parts, family):
    wf, ck = _loader_only(f"tiny-{family}-ldm.safetensors")
    result = engine.run(wf, targets=[ck])
    assert result.ok, result.errors
    out = result.outputs[ck]
    assert out["model"].family == ("sdxl" if family == "sdxl" else "custom")
    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    handles = {"unet": out["model"], "vae": out["vae"]}
    for comp in components:
        module = _loaded(engine, handles.get(comp, out["clip"]), comp)
        want = tiny_parts[family][comp].state_dict()
        got = module.state_dict()
        assert set(got) == set(want), comp
        for k, v in want.items():
            assert torch.equal(got[k], v), f"{comp}: {k}"


def test_single_file_graph_equals_diffusers_folder_graph(engine):
    images = []
    for ckpt in ("tiny-sd1", "tiny-sd1-ldm.safetensors"):
        wf, ids = fx.txt2img(ckpt, steps=2)
        result = engine.run(wf)
        assert result.ok, result.errors
        images.append(result.outputs[ids["decode"]]["image"])
    assert torch.equal(images[0], images[1])


def test_changing_only_the_seed_reruns_only_the_sampler_and_what_follows(engine):
    wf, ids = fx.txt2img("tiny-sd1", steps=2, seed=1)
    first = engine.run(wf)
    assert first.ok, first.errors
    assert set(ids.values()) <= first.ran
    wf.set_param(ids["sampler"], "seed", 2)
    second = engine.run(wf)
    assert second.ran == {ids["sampler"], ids["decode"], ids["out"]}
    assert {ids["ckpt"], ids["pos"], ids["neg"], ids["latent"]} <= second.cached
    a = first.outputs[ids["decode"]]["image"]
    b = second.outputs[ids["decode"]]["image"]
    assert not torch.equal(a, b)


def test_a_second_workflow_naming_the_same_checkpoint_does_not_load_it_again(engine):
    wf1, _ = fx.txt2img("tiny-sd1", steps=1, prompt="one")
    assert engine.run(wf1).ok
    loads = engine.models.loads
    wf2, ids2 = fx.txt2img("tiny-sd1", steps=1, prompt="two", seed=7)
    wf2.set_title(ids2["ckpt"], "another loader")
    result = engine.run(wf2)
    assert result.ok, result.errors
    assert engine.models.loads == loads


def test_a_changed_checkpoint_file_reruns_its_loader(engine, models_root, tiny_parts, tmp_path):
    import shutil

    path = models_root / "checkpoints" / "changing.safetensors"
    src = models_root / "checkpoints" / "tiny-sd1-ldm.safetensors"
    shutil.copy(src, path)
    shutil.copy(src.with_suffix(".json"), path.with_suffix(".json"))
    wf, ck = _loader_only("changing.safetensors")
    assert ck in engine.run(wf, targets=[ck]).ran
    assert ck in engine.run(wf, targets=[ck]).cached
    with torch.no_grad():
        tiny_parts["sd1"]["unet"].conv_in.bias.add_(1.0)
    try:
        fx.write_ldm_checkpoint(tiny_parts["sd1"], path)
    finally:
        with torch.no_grad():
            tiny_parts["sd1"]["unet"].conv_in.bias.sub_(1.0)
    again = engine.run(wf, targets=[ck])
    assert ck in again.ran
    assert "file" in again.reasons[ck]


# -- bad input ------------------------------------------------------------------------------


def _error_of(engine, wf, node_id) -> str:
    result = engine.run(wf, targets=[node_id])
    assert node_id in result.errors, "expected a node error"
    return result.errors[node_id]


def test_missing_checkpoint_is_reported_naming_the_node_and_file(engine):
    from studio.engine import WorkflowInvalid

    # The validator already knows the file list, so this stops the run before it starts.
    wf, ck = _loader_only("nope.safetensors")
    with pytest.raises(WorkflowInvalid) as info:
        engine.run(wf, targets=[ck])
    # Named by its title (issue 20: ids only where two nodes share a title).
    assert "nope.safetensors" in str(info.value) and "Load Checkpoint" in str(info.value)


def test_corrupt_checkpoint_is_a_node_error_naming_it(engine, models_root):
    (models_root / "checkpoints" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    wf, ck = _loader_only("broken.safetensors")
    message = _error_of(engine, wf, ck)
    assert "broken.safetensors" in message
    assert "safetensors" in message


def test_truncated_checkpoint_is_a_node_error(engine, models_root):
    whole = (models_root / "checkpoints" / "tiny-sd1-ldm.safetensors").read_bytes()
    (models_root / "checkpoints" / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    wf, ck = _loader_only("cut.safetensors")
    message = _error_of(engine, wf, ck)
    assert "cut.safetensors" in message and "incomplete" in message


def test_unknown_family_is_a_node_error(engine, tiny_parts, models_root):
    # The tiny model in the original layout but without its config: its shapes match
    # no known family.
    fx.write_ldm_checkpoint(
        tiny_parts["sd1"], models_root / "checkpoints" / "odd.safetensors", sidecar=False
    )
    wf, ck = _loader_only("odd.safetensors")
    message = _error_of(engine, wf, ck)
    assert "odd.safetensors" in message and "unknown checkpoint family" in message


def test_pickled_checkpoint_with_code_is_refused(engine, models_root):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(models_root / "checkpoints" / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    wf, ck = _loader_only("evil.ckpt")
    message = _error_of(engine, wf, ck)
    assert "evil.ckpt" in message and "refused" in message


def test_plain_weights_ckpt_loads(engine, models_root):
    from safetensors.torch import load_file

    src = models_root / "checkpoints" / "tiny-sd1-ldm.safetensors"
    torch.save({"state_dict": load_file(str(src))}, models_root / "checkpoints" / "plain.ckpt")
    (models_root / "checkpoints" / "plain.json").write_text(src.with_suffix(".json").read_text())
    wf, ck = _loader_only("plain.ckpt")
    result = engine.run(wf, targets=[ck])
    assert result.ok, result.errors


def test_prompt_on_the_wrong_clip_type_is_a_node_error(engine):
    wf, ids = fx.txt2img("tiny-sd1", steps=1)
    xl = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sdxl-ldm.safetensors"}).id
    wf.connect(xl, "clip", ids["pos"], "clip")
    result = engine.run(wf)
    message = result.errors[ids["sampler"]]
    assert "positive" in message and "CLIP" in message
    assert ids["decode"] in result.errors  # skipped because its input failed


def test_latent_size_not_a_multiple_of_8_is_a_node_error(engine):
    wf, ids = fx.txt2img("tiny-sd1", steps=1, width=60)
    result = engine.run(wf)
    message = result.errors[ids["latent"]]
    assert "width 60" in message and "multiple of 8" in message


# -- family detection from keys and shapes ----------------------------------------------------

U = "model.diffusion_model."


def _shapes(width: int, clip_prefix: str, extra: dict | None = None) -> dict:
    shapes = {
        U + "input_blocks.0.0.weight": (320, 4, 3, 3),
        U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, width),
        clip_prefix + "x.weight": (1,),
        "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    }
    shapes.update(extra or {})
    return shapes


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        (_shapes(768, "cond_stage_model.transformer."), "sd1"),
        (_shapes(1024, "cond_stage_model.model."), "sd2"),
        (
            _shapes(
                2048,
                "conditioner.embedders.0.transformer.",
                {"conditioner.embedders.1.model.positional_embedding": (77, 1280)},
            ),
            "sdxl",
        ),
    ],
)
def test_family_is_detected_from_keys_and_shapes(shapes, family):
    from nodes.sdload import detect_family

    assert detect_family(shapes, "x") == family


@pytest.mark.parametrize(
    ("shapes", "needle"),
    [
        ({"lora_unet_down_blocks_0.lora_down.weight": (4, 320)}, "LoRA"),
        ({"encoder.conv_in.weight": (128, 3, 3, 3)}, "VAE"),
        (
            _shapes(
                768,
                "cond_stage_model.transformer.",
                {U + "input_blocks.0.0.weight": (320, 9, 3, 3)},
            ),
            "inpainting",
        ),
        (_shapes(512, "cond_stage_model.transformer."), "unknown checkpoint family"),
    ],
)
def test_files_that_are_not_usable_checkpoints_say_what_they_are(shapes, needle):
    from nodes.sdload import detect_family

    with pytest.raises(NodeError, match=needle):
        detect_family(shapes, "x")
