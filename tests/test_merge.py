"""Model merging (ComfyUI's ModelMergeSimple / Blocks / Subtract / Add and the CLIP merges):
the merged graph draws the picture of a checkpoint merged by hand with the same formula,
ComfyUI files with the merge nodes import, run and export, bad inputs are refused."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures as fx  # noqa: E402

from studio.graph import Workflow  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402

tiny_parts, models_root = fx.tiny_parts, fx.models_root

PROMPT, NEGATIVE, SEED = "a red fox in the snow", "blurry", 5


def _perturbed(parts: dict, seed: int) -> dict:
    """Another SD1 model of the same shapes: each weight moved by noise."""
    out = dict(parts)
    g = torch.Generator().manual_seed(seed)
    for name in ("unet", "text_encoder"):
        module = copy.deepcopy(parts[name])
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3 * (p.std() if p.numel() > 1 else 1))
        out[name] = module
    return out


def _combined(a, b, c=None, *, unet, clip) -> dict:
    """A hand-merged copy: unet / clip give each weight from the modules' weights by key."""
    out = dict(a)
    for name, rule in (("unet", unet), ("text_encoder", clip)):
        module = copy.deepcopy(a[name])
        sb = b[name].state_dict()
        sc = c[name].state_dict() if c is not None else None
        with torch.no_grad():
            for key, t in module.state_dict().items():
                if not t.is_floating_point() or key.endswith("position_ids"):
                    continue
                t.copy_(rule(key, t.clone(), sb[key], sc[key] if sc is not None else None))
        out[name] = module
    return out


def _blocks(key: str) -> float:
    if key.startswith("mid_block."):
        return 0.2
    if key.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")):
        return 0.9
    return 0.4


@pytest.fixture(scope="module")
def merge_root(tmp_path_factory, tiny_parts):
    a = tiny_parts["sd1"]
    b, c = _perturbed(a, 1), _perturbed(a, 2)
    root = tmp_path_factory.mktemp("merge-models")
    ckpts = root / "checkpoints"
    ckpts.mkdir()
    for name, parts in {
        "a": a,
        "b": b,
        "c": c,
        "by-hand-simple": _combined(
            a, b,
            unet=lambda k, x, y, z: 0.3 * x + 0.7 * y,
            clip=lambda k, x, y, z: 0.6 * x + 0.4 * y,
        ),
        "by-hand-blocks": _combined(
            a, b, unet=lambda k, x, y, z: _blocks(k) * x + (1 - _blocks(k)) * y,
            clip=lambda k, x, y, z: x,
        ),
        # add difference: a + 0.5 (b - c), built as Subtract(b, c, 0.5) then Add(a, ...)
        "by-hand-add-difference": _combined(
            a, b, c,
            unet=lambda k, x, y, z: x + (y - 0.5 * z),
            clip=lambda k, x, y, z: x + (y - 0.5 * z),
        ),
    }.items():  # fmt: skip
        fx.save_folder(fx.sd1_pipeline(parts), ckpts / name)
    return root


@pytest.fixture
def engine(merge_root, tmp_path):
    from studio.engine import Engine
    from studio.settings import Settings

    settings = Settings(models_root=str(merge_root), output_dir=str(tmp_path / "out"))
    return Engine(installed_registry(), settings=settings)


def _picture(engine, wf, model, clip, vae, sampler: dict | None = None) -> np.ndarray:
    """Sample from (node, output) model / clip / vae sources in ``wf``."""
    params = sampler or {"seed": SEED, "steps": 3, "cfg": 6.0, "sampler": "euler"}
    dec = fx.sampling_tail(wf, model, clip, vae, prompt=PROMPT, negative=NEGATIVE, params=params)
    result = engine.run(wf, targets=[dec])
    assert result.ok, result.errors
    return result.outputs[dec]["image"].numpy()


def _checkpoint(engine, name: str) -> np.ndarray:
    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": name}).id
    return _picture(engine, wf, (ck, "model"), (ck, "clip"), (ck, "vae"))


def _merged(engine, model_node: tuple[str, dict], clip_node: tuple[str, dict] | None):
    wf = Workflow(installed_registry())
    a = wf.add_node("load_checkpoint", {"ckpt_name": "a"}).id
    b = wf.add_node("load_checkpoint", {"ckpt_name": "b"}).id
    m = wf.add_node(*model_node).id
    wf.connect(a, "model", m, "model1")
    wf.connect(b, "model", m, "model2")
    clip = (a, "clip")
    if clip_node is not None:
        cm = wf.add_node(*clip_node).id
        wf.connect(a, "clip", cm, "clip1")
        wf.connect(b, "clip", cm, "clip2")
        clip = (cm, "clip")
    return _picture(engine, wf, (m, "model"), clip, (a, "vae"))


def test_a_weighted_merge_draws_the_hand_merged_checkpoints_picture(engine):
    got = _merged(engine, ("merge_models", {"ratio": 0.3}), ("merge_clips", {"ratio": 0.6}))
    want = _checkpoint(engine, "by-hand-simple")
    assert np.abs(got - want).max() <= 1e-5
    for other in ("a", "b"):
        assert np.abs(got - _checkpoint(engine, other)).max() > 1e-2
    # ratio 1 is model1 (and clip1) alone
    one = _merged(engine, ("merge_models", {"ratio": 1.0}), ("merge_clips", {"ratio": 1.0}))
    assert np.abs(one - _checkpoint(engine, "a")).max() <= 1e-5


def test_a_block_merge_takes_each_blocks_own_ratio(engine):
    params = {"input": 0.4, "middle": 0.2, "out": 0.9}
    got = _merged(engine, ("merge_models_blocks", params), None)
    assert np.abs(got - _checkpoint(engine, "by-hand-blocks")).max() <= 1e-5


def test_add_difference_from_subtract_then_add(engine):
    wf = Workflow(installed_registry())
    a, b, c = (wf.add_node("load_checkpoint", {"ckpt_name": n}).id for n in "abc")
    sub = wf.add_node("merge_models_subtract", {"multiplier": 0.5}).id
    add = wf.add_node("merge_models_add").id
    csub = wf.add_node("merge_clips_subtract", {"multiplier": 0.5}).id
    cadd = wf.add_node("merge_clips_add").id
    for out, (s, plus) in (("model", (sub, add)), ("clip", (csub, cadd))):
        first, second = ("model1", "model2") if out == "model" else ("clip1", "clip2")
        wf.connect(b, out, s, first)
        wf.connect(c, out, s, second)
        wf.connect(a, out, plus, first)
        wf.connect(s, out, plus, second)
    got = _picture(engine, wf, (add, "model"), (cadd, "clip"), (a, "vae"))
    assert np.abs(got - _checkpoint(engine, "by-hand-add-difference")).max() <= 1e-5


def _api(ratio: float) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b"}},
        "10": {"class_type": "ModelMergeSimple",
               "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": ratio}},
        "11": {"class_type": "CLIPMergeSimple",
               "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "ratio": 0.6}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["11", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["11", 0]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": 3, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["10", 0], "positive": ["3", 0], "negative": ["4", 0],
            "latent_image": ["5", 0]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
    }  # fmt: skip


def test_comfyui_merge_nodes_import_run_and_export(engine):
    api = _api(0.3)
    result = import_comfyui(api, installed_registry(), source="merge.json")
    wf = result.workflow
    assert wf.get_node("10").type == "merge_models" and wf.get_node("11").type == "merge_clips"
    assert not [n for n in wf.nodes if n.type.startswith("comfyui.")], result.report
    out = export_comfyui_api(wf)
    assert out["10"]["class_type"] == "ModelMergeSimple"
    assert out["10"]["inputs"] == api["10"]["inputs"]
    assert out["11"]["inputs"] == api["11"]["inputs"]
    run = engine.run(wf, targets=["7"])
    assert run.ok, run.errors
    hand = Workflow(installed_registry())
    ck = hand.add_node("load_checkpoint", {"ckpt_name": "by-hand-simple"}).id
    sampler = dict(wf.get_node("6").params)  # the KSampler's: ComfyUI's schedule
    want = _picture(engine, hand, (ck, "model"), (ck, "clip"), (ck, "vae"), sampler)
    assert np.abs(run.outputs["7"]["image"].numpy() - want).max() <= 1e-5


def _run_error(engine, wf, target) -> str:
    result = engine.run(wf, targets=[target])
    assert not result.ok
    message = str(result.errors)
    assert "Traceback" not in message
    return message


def test_merging_two_families_or_a_non_model_is_a_clear_error(engine, merge_root, tmp_path):
    from studio.engine import Engine
    from studio.settings import Settings

    # two families (the tiny SD1 is read as a custom UNet: its sizes are no SD release's)
    wf = Workflow(installed_registry())
    a = wf.add_node("load_checkpoint", {"ckpt_name": "a"}).id
    x = wf.add_node("load_checkpoint", {"ckpt_name": "x"}).id
    m = wf.add_node("merge_models", {"ratio": 0.5}).id
    wf.connect(a, "model", m, "model1")
    wf.connect(x, "model", m, "model2")
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "a").symlink_to(merge_root / "checkpoints" / "a")
    sdxl = fx.sdxl_pipeline(fx.tiny_sdxl())
    fx.save_folder(sdxl, root / "checkpoints" / "x")
    other = Engine(installed_registry(), settings=Settings(models_root=str(root)))
    message = _run_error(other, wf, m)
    assert "model1 is a custom UNet and model2 is SDXL: merge models of one family" in message

    # not a model at all
    from nodes.merge import merge_models

    class Handle:
        pass

    with pytest.raises(Exception, match="model2 input is not a model"):
        merge_models.execute(None, model1=_loaded_model(engine), model2=Handle(), ratio=0.5)


def _loaded_model(engine):
    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": "a"}).id
    result = engine.run(wf, targets=[ck])
    assert result.ok, result.errors
    return result.outputs[ck]["model"]


def _saved(engine, wf) -> str:
    from pathlib import Path

    result = engine.run(wf)
    assert result.ok, result.errors
    (path,) = Path(engine.settings.output_path).rglob("*.safetensors")
    return str(path)


def test_a_saved_merge_loads_as_a_checkpoint_and_draws_the_same_picture(engine, merge_root):
    import shutil

    from safetensors import safe_open

    wf = Workflow(installed_registry())
    a = wf.add_node("load_checkpoint", {"ckpt_name": "a"}).id
    b = wf.add_node("load_checkpoint", {"ckpt_name": "b"}).id
    m = wf.add_node("merge_models", {"ratio": 0.3}).id
    cm = wf.add_node("merge_clips", {"ratio": 0.6}).id
    save = wf.add_node("save_checkpoint", {"filename_prefix": "checkpoints/merged"}).id
    for x, y, first, second, out in ((a, b, "model1", "model2", "model"),
                                     (a, b, "clip1", "clip2", "clip")):  # fmt: skip
        target = m if out == "model" else cm
        wf.connect(x, out, target, first)
        wf.connect(y, out, target, second)
    wf.connect(m, "model", save, "model")
    wf.connect(cm, "clip", save, "clip")
    wf.connect(a, "vae", save, "vae")
    path = _saved(engine, wf)
    assert path.endswith("checkpoints/merged_00001.safetensors")
    with safe_open(path, "pt") as f:  # the LDM layout other tools read
        keys = set(f.keys())
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    assert any(k.startswith("first_stage_model.encoder.") for k in keys)
    shutil.copy(path, merge_root / "checkpoints" / "saved-merge.safetensors")
    got = _checkpoint(engine, "saved-merge.safetensors")
    want = _checkpoint(engine, "by-hand-simple")
    assert np.abs(got - want).max() <= 2e-2  # the file is fp16
    assert np.abs(got - _checkpoint(engine, "a")).max() > 5e-2


def test_a_saved_checkpoint_carries_its_workflow_and_model_spec(engine):
    """Model sites read Stability's model spec to tell what a file is; the workflow makes
    the file its own recipe, as a saved image is."""
    import json
    from dataclasses import replace

    from safetensors import safe_open

    from nodes.merge import save_checkpoint
    from studio.graph.fileformat import loads_workflow

    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": "a"}).id
    save = wf.add_node("save_checkpoint", {"filename_prefix": "spec"}).id
    for out in ("model", "clip", "vae"):
        wf.connect(ck, out, save, out)
    with safe_open(_saved(engine, wf), "pt") as f:
        meta = f.metadata()
    saved = loads_workflow(meta["studio_workflow"], registry=installed_registry())
    assert [n.type for n in saved.nodes] == ["load_checkpoint", "save_checkpoint"]
    assert "modelspec.architecture" not in meta  # a custom UNet has no spec architecture
    assert json.loads(meta["studio"])["family"] == "custom"

    class Ctx:  # the node alone, as an SD 1.x model
        workflow = None
        settings = engine.settings
        check_interrupt = staticmethod(lambda: None)

        def __init__(self):
            self.run_info: dict = {}

    model = replace(_loaded_model(engine), family="sd1")
    clip = replace(_loaded(engine, "clip"), family="sd1")
    save_checkpoint.execute(Ctx(), model=model, clip=clip, vae=_loaded(engine, "vae"),
                            filename_prefix="sd1")  # fmt: skip
    (path,) = Path(engine.settings.output_path).glob("sd1_*.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert meta["modelspec.title"] == "sd1" and "studio_workflow" not in meta


def test_studio_tiny_saved_reopens_with_its_own_tokenizer(tmp_path):
    """The embedded model has its own vocabulary: the saved file carries it."""
    from studio.engine import Engine
    from studio.modelfiles import EMBEDDED_MODELS
    from studio.settings import Settings

    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "studio-tiny").symlink_to(
        EMBEDDED_MODELS / "checkpoints" / "studio-tiny"
    )
    engine = Engine(
        installed_registry(),
        settings=Settings(models_root=str(root), output_dir=str(tmp_path / "out")),
    )
    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": "studio-tiny"}).id
    save = wf.add_node("save_checkpoint").id
    for out in ("model", "clip", "vae"):
        wf.connect(ck, out, save, out)
    path = _saved(engine, wf)
    (root / "checkpoints" / "again.safetensors").symlink_to(path)
    prompt = "a red circle on a blue background"
    pictures = []
    for name in ("studio-tiny", "again.safetensors"):
        wf, ids = fx.txt2img(name, prompt=prompt, seed=3, steps=6, cfg=3.0)
        result = engine.run(wf)
        assert result.ok, result.errors
        pictures.append(result.outputs[ids["decode"]]["image"].numpy())
    assert np.abs(pictures[0] - pictures[1]).max() <= 2e-2


def test_save_checkpoint_refuses_a_transformer_and_names_it(engine):
    from dataclasses import replace

    from nodes.merge import save_checkpoint

    flux = replace(_loaded_model(engine), family="flux")
    with pytest.raises(Exception, match=r"writes SD 1\.x and SDXL checkpoints; this model is Flux"):
        save_checkpoint.execute(None, model=flux, clip=_loaded(engine, "clip"),
                                vae=_loaded(engine, "vae"))  # fmt: skip


def _loaded(engine, output: str):
    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": "a"}).id
    result = engine.run(wf, targets=[ck])
    return result.outputs[ck][output]


def test_an_sdxl_checkpoint_saved_reopens_with_its_picture(models_root, tmp_path):
    """Two text encoders (CLIP-L and OpenCLIP-G) and SDXL's size embedding survive the LDM
    layout."""
    from studio.engine import Engine
    from studio.settings import Settings

    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "tiny-sdxl").symlink_to(models_root / "checkpoints" / "tiny-sdxl")
    settings = Settings(models_root=str(root), output_dir=str(tmp_path / "out"))
    engine = Engine(installed_registry(), settings=settings)
    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sdxl"}).id
    save = wf.add_node("save_checkpoint", {"filename_prefix": "xl"}).id
    for out in ("model", "clip", "vae"):
        wf.connect(ck, out, save, out)
    path = _saved(engine, wf)
    (root / "checkpoints" / "xl.safetensors").symlink_to(path)
    pictures = [_checkpoint(engine, name) for name in ("tiny-sdxl", "xl.safetensors")]
    assert np.abs(pictures[0] - pictures[1]).max() <= 2e-2


def test_flux_transformers_merge_as_their_hand_merged_file(tmp_path):
    """Diffusion transformers merge like UNets: two Flux files in diffusion_models, merged
    at 0.3, draw the picture of the file merged by hand."""
    import dit_fixtures as dfx

    from studio.engine import Engine
    from studio.settings import Settings

    parts = dfx.tiny_flux()
    a = parts["transformer"]
    b = copy.deepcopy(a)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3 * (p.std() if p.numel() > 1 else 1))
    hand = copy.deepcopy(a)
    with torch.no_grad():
        for p, q in zip(hand.state_dict().values(), b.state_dict().values(), strict=True):
            p.copy_(0.3 * p + 0.7 * q)
    root = tmp_path / "models"
    for d in ("diffusion_models", "text_encoders", "vae"):
        (root / d).mkdir(parents=True)
    for name, t in (("a", a), ("b", b), ("hand", hand)):
        dfx.save(dfx.to_original(t, "flux"), root / "diffusion_models" / f"{name}.safetensors")
    dfx.save(
        dfx.clip_file_state(parts["text_encoder"]), root / "text_encoders" / "clip_l.safetensors"
    )
    dfx.save(dfx.t5_file_state(parts["text_encoder_2"]), root / "text_encoders" / "t5.safetensors")
    dfx.save(dfx.ldm_vae(parts["vae"]), root / "vae" / "ae.safetensors")
    settings = Settings(models_root=str(root), output_dir=str(tmp_path / "out"))
    engine = Engine(installed_registry(), settings=settings)

    def picture(*unets: str, ratio: float = 0.3) -> np.ndarray:
        wf = Workflow(installed_registry())
        loads = [wf.add_node("load_diffusion_model", {"unet_name": f"{u}.safetensors"}).id
                 for u in unets]  # fmt: skip
        model = (loads[0], "model")
        if len(loads) == 2:
            m = wf.add_node("merge_models", {"ratio": ratio}).id
            wf.connect(loads[0], "model", m, "model1")
            wf.connect(loads[1], "model", m, "model2")
            model = (m, "model")
        clip = wf.add_node("load_text_encoders", {"clip_name1": "clip_l.safetensors",
                                                  "clip_name2": "t5.safetensors",
                                                  "type": "flux"}).id  # fmt: skip
        vae = wf.add_node("load_vae", {"vae_name": "ae.safetensors", "latent_scale": "flux"}).id
        return _picture(engine, wf, model, (clip, "clip"), (vae, "vae"))

    got = picture("a", "b")
    assert np.abs(got - picture("hand")).max() <= 1e-5
    assert np.abs(got - picture("a")).max() > 1e-3
