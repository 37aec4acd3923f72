"""LoRA: a graph with Load LoRA equals the pipeline after load_lora_weights (tiny models)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures as fx  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from studio.engine import Engine  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402

PROMPT, NEGATIVE, SEED, STEPS, CFG = "a red circle", "blurry", 7, 3, 6.0
RANK = 4


def _lora_targets(parts):
    unet_mods = [
        (name, mod)
        for name, mod in parts["unet"].named_modules()
        if name.endswith(("attn1.to_q", "attn2.to_k", "attn2.to_v", "attn1.to_out.0"))
    ]
    te_mods = [
        (name, mod)
        for name, mod in parts["text_encoder"].named_modules()
        if name.endswith(
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
        )
    ]
    return unet_mods, te_mods


def write_peft_lora(parts, path, seed, width=None):
    """A LoRA in the diffusers/peft layout (lora_A / lora_B keys with component prefixes)."""
    g = torch.Generator().manual_seed(seed)
    unet_mods, te_mods = _lora_targets(parts)
    sd = {}
    for prefix, mods in (("unet", unet_mods), ("text_encoder", te_mods)):
        for name, mod in mods:
            fan_in = mod.in_features
            if width is not None and name.endswith("attn2.to_k"):
                fan_in = width
            sd[f"{prefix}.{name}.lora_A.weight"] = torch.randn(RANK, fan_in, generator=g) * 0.3
            sd[f"{prefix}.{name}.lora_B.weight"] = (
                torch.randn(mod.out_features, RANK, generator=g) * 0.3
            )
    save_file(sd, str(path))


def write_kohya_lora(parts, path, seed):
    """A LoRA in the kohya/A1111 layout (lora_down / lora_up / alpha, underscored names)."""
    g = torch.Generator().manual_seed(seed)
    unet_mods, te_mods = _lora_targets(parts)
    sd = {}
    for prefix, mods in (("lora_unet", unet_mods), ("lora_te", te_mods)):
        for name, mod in mods:
            key = f"{prefix}_{name.replace('.', '_')}"
            sd[f"{key}.lora_down.weight"] = torch.randn(RANK, mod.in_features, generator=g) * 0.3
            sd[f"{key}.lora_up.weight"] = torch.randn(mod.out_features, RANK, generator=g) * 0.3
            sd[f"{key}.alpha"] = torch.tensor(float(RANK) / 2)
    save_file(sd, str(path))


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    parts = fx.tiny_sd1()
    fx.save_folder(fx.sd1_pipeline(parts), root / "checkpoints" / "tiny-sd1")
    (root / "loras").mkdir()
    write_peft_lora(parts, root / "loras" / "peft-style.safetensors", seed=1)
    write_kohya_lora(parts, root / "loras" / "kohya-style.safetensors", seed=2)
    write_peft_lora(parts, root / "loras" / "wide-text.safetensors", seed=3, width=64)
    return root


@pytest.fixture
def engine(models_root, tmp_path):
    settings = Settings(models_root=str(models_root), output_dir=str(tmp_path / "out"))
    yield Engine(installed_registry(), settings=settings)


def lora_graph(loras, *, wf_ids=None):
    """txt2img with a chain of Load LoRA nodes between the checkpoint and its users."""
    wf, ids = wf_ids or fx.txt2img(
        "tiny-sd1", prompt=PROMPT, negative=NEGATIVE, seed=SEED, steps=STEPS, cfg=CFG
    )
    model_src, clip_src = (ids["ckpt"], "model"), (ids["ckpt"], "clip")
    for i, (name, sm, sc) in enumerate(loras):
        node = wf.add_node(
            "load_lora",
            {"lora_name": name, "strength_model": sm, "strength_clip": sc},
            title=f"LoRA {i}",
        )
        wf.connect(*model_src, node.id, "model")
        wf.connect(*clip_src, node.id, "clip")
        model_src, clip_src = (node.id, "model"), (node.id, "clip")
        ids[f"lora{i}"] = node.id
    wf.connect(*model_src, ids["sampler"], "model")
    wf.connect(*clip_src, ids["pos"], "clip")
    wf.connect(*clip_src, ids["neg"], "clip")
    return wf, ids


def graph_image(engine, loras):
    wf, ids = lora_graph(loras)
    result = engine.run(wf)
    assert result.ok, result.errors
    return result.outputs[ids["decode"]]["image"].numpy(), result, ids


def pipeline_image(models_root, loras):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(models_root / "checkpoints" / "tiny-sd1"), safety_checker=None
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    names = []
    for i, (name, strength) in enumerate(loras):
        pipe.load_lora_weights(str(models_root / "loras" / name), adapter_name=f"l{i}")
        names.append((f"l{i}", strength))
    if names:
        pipe.set_adapters([n for n, _ in names], [s for _, s in names])
    return pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        height=64,
        width=64,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images


@pytest.mark.parametrize("name", ["peft-style.safetensors", "kohya-style.safetensors"])
def test_lora_graph_equals_pipeline_load_lora_weights(engine, models_root, name):
    got, *_ = graph_image(engine, [(name, 0.8, 0.8)])
    want = pipeline_image(models_root, [(name, 0.8)])
    base = pipeline_image(models_root, [])
    assert np.abs(want - base).max() > 1e-2  # the LoRA visibly changes the image
    assert np.abs(got - want).max() <= 1e-4


def test_chained_loras_add_up(engine, models_root):
    loras = [("peft-style.safetensors", 0.5, 0.5), ("kohya-style.safetensors", 0.7, 0.7)]
    got, *_ = graph_image(engine, loras)
    want = pipeline_image(models_root, [(n, s) for n, s, _ in loras])
    assert np.abs(got - want).max() <= 1e-4


def test_strength_zero_equals_no_lora_and_strength_change_never_reloads(engine, models_root):
    plain_wf, plain_ids = fx.txt2img(
        "tiny-sd1", prompt=PROMPT, negative=NEGATIVE, seed=SEED, steps=STEPS, cfg=CFG
    )
    plain = engine.run(plain_wf).outputs[plain_ids["decode"]]["image"].numpy()
    zero, *_ = graph_image(engine, [("peft-style.safetensors", 0.0, 0.0)])
    assert np.array_equal(zero, plain)
    loads = engine.models.loads
    graph_image(engine, [("peft-style.safetensors", 1.0, 1.0)])
    after_first = engine.models.loads
    graph_image(engine, [("peft-style.safetensors", 0.3, 1.0)])
    assert engine.models.loads == after_first  # a new strength loads nothing
    assert after_first - loads <= 1  # at most the LoRA file itself, never the checkpoint


def test_two_branches_with_different_loras_stay_apart(engine, models_root):
    from studio.graph.fileformat import workflow_from_dict, workflow_to_dict

    a_alone, *_ = graph_image(engine, [("peft-style.safetensors", 1.0, 1.0)])
    b_alone, *_ = graph_image(engine, [("kohya-style.safetensors", 1.0, 1.0)])
    plain_alone, *_ = graph_image(engine, [])
    # One workflow, one checkpoint, three branches: LoRA A, LoRA B, and none.
    branches = [
        lora_graph([("peft-style.safetensors", 1.0, 1.0)]),
        lora_graph([("kohya-style.safetensors", 1.0, 1.0)]),
        lora_graph([]),
    ]
    merged = workflow_to_dict(branches[0][0])
    ckpt = branches[0][1]["ckpt"]
    for wf_x, ids_x in branches[1:]:
        data = workflow_to_dict(wf_x)
        merged["nodes"] += [n for n in data["nodes"] if n["id"] != ids_x["ckpt"]]
        for link in data["links"]:
            if link["source"] == ids_x["ckpt"]:
                link["source"] = ckpt
            merged["links"].append(link)
    result = Engine(installed_registry(), settings=engine.settings).run(
        workflow_from_dict(merged, registry=installed_registry())
    )
    assert result.ok, result.errors
    for (_, ids_x), alone in zip(branches, (a_alone, b_alone, plain_alone), strict=True):
        got = result.outputs[ids_x["decode"]]["image"].numpy()
        assert np.abs(got - alone).max() <= 1e-5


def test_lora_for_another_family_is_a_clear_error(engine):
    wf, ids = lora_graph([("wide-text.safetensors", 1.0, 1.0)])
    result = engine.run(wf)
    message = result.errors[ids["lora0"]]
    assert "wide-text.safetensors" in message and "family" in message


def test_a_lora_saved_into_a_checkpoint_draws_the_lora_picture(engine, models_root, tmp_path):
    """Save Checkpoint folds the model's and clip's LoRAs into the weights (two LoRAs, two
    strengths each): the file reopens with the LoRA picture, no Load LoRA needed."""
    loras = [("peft-style.safetensors", 0.8, 0.6), ("kohya-style.safetensors", 0.5, 0.9)]
    wf, ids = lora_graph(loras)
    save = wf.add_node("save_checkpoint", {"filename_prefix": "baked"}).id
    wf.connect(ids["lora1"], "model", save, "model")
    wf.connect(ids["lora1"], "clip", save, "clip")
    wf.connect(ids["ckpt"], "vae", save, "vae")
    result = engine.run(wf)
    assert result.ok, result.errors
    want = result.outputs[ids["decode"]]["image"].numpy()
    (path,) = (tmp_path / "out").glob("baked_*.safetensors")
    (models_root / "checkpoints" / "baked-loras.safetensors").symlink_to(path)
    plain_wf, plain_ids = fx.txt2img(
        "baked-loras.safetensors", prompt=PROMPT, negative=NEGATIVE, seed=SEED, steps=STEPS,
        cfg=CFG,
    )  # fmt: skip
    run = engine.run(plain_wf)
    assert run.ok, run.errors
    got = run.outputs[plain_ids["decode"]]["image"].numpy()
    plain, *_ = graph_image(engine, [])
    assert np.abs(want - plain).max() > 5e-2  # the LoRAs show
    assert np.abs(got - want).max() <= 2e-2  # the file is fp16


def test_a_merge_folds_its_inputs_loras_in(engine):
    """ComfyUI merges a patched model: ratio 1 of a LoRA'd model1 (and clip1) is that model
    with its LoRA; ratio 0 is model2 (and clip2) alone."""

    def picture(ratio: float):
        wf, ids = fx.txt2img("tiny-sd1", prompt=PROMPT, negative=NEGATIVE, seed=SEED,
                             steps=STEPS, cfg=CFG)  # fmt: skip
        lora = wf.add_node(
            "load_lora",
            {"lora_name": "peft-style.safetensors", "strength_model": 0.8, "strength_clip": 0.6},
        ).id
        wf.connect(ids["ckpt"], "model", lora, "model")
        wf.connect(ids["ckpt"], "clip", lora, "clip")
        m = wf.add_node("merge_models", {"ratio": ratio}).id
        c = wf.add_node("merge_clips", {"ratio": ratio}).id
        for node, out, first, second in (
            (m, "model", "model1", "model2"),
            (c, "clip", "clip1", "clip2"),
        ):
            wf.connect(lora, out, node, first)
            wf.connect(ids["ckpt"], out, node, second)
        wf.connect(m, "model", ids["sampler"], "model")
        wf.connect(c, "clip", ids["pos"], "clip")
        wf.connect(c, "clip", ids["neg"], "clip")
        result = engine.run(wf)
        assert result.ok, result.errors
        return result.outputs[ids["decode"]]["image"].numpy()  # fmt: skip

    with_lora, *_ = graph_image(engine, [("peft-style.safetensors", 0.8, 0.6)])
    without, *_ = graph_image(engine, [])
    assert np.abs(with_lora - without).max() > 5e-2
    assert np.abs(picture(1.0) - with_lora).max() <= 1e-4
    assert np.abs(picture(0.0) - without).max() <= 1e-5
