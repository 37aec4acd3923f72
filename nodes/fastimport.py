"""Import only the parts of diffusers a run uses.

Several diffusers package ``__init__`` files import every class of their family: touching
``diffusers.models.unets.unet_2d_condition`` first runs ``diffusers/models/unets/__init__.py``,
which imports every UNet, whose blocks import ``diffusers.models.transformers``, whose
``__init__`` imports about eighty transformer models, and ``diffusers.hooks`` pulls peft.
On a small CPU that was seconds before the first step of a run. transformers'
``models/__init__`` reads every one of its few hundred model folders to build its import
table (about half a second); a run needs two of them.

diffusers, transformers and torchvision also import ``torch._dynamo`` (torch.compile's
front end, about as long to import as torch itself) at import time, for decorators only
(``allow_in_graph``, ``torch.compiler.disable``, ``assume_constant_result``: see
:data:`DYNAMO_USERS`). A run that never compiles does not need it: :class:`_DeferDynamo`
lets those modules import without it and hands dynamo what they asked for the moment
something (``torch.compile``) imports it, so compiling behaves as if it had come first.
Any other use of the stand-in imports the real dynamo (tests/test_cold_imports.py).

:func:`install` puts a lazy stand-in for those packages into ``sys.modules``: importing one
of their modules imports that module alone; asking the package for anything else runs its
real ``__init__`` first, so code that wants the whole family (a pipeline, a node pack)
still gets it. Nothing here imports torch or diffusers.

Other modules the libraries import for every model but use only for features a plain run
never touches (:data:`DEFERRALS`): transformers' distributed helpers import
``torch.distributed.tensor`` and its tensor-parallel styles (with torch.fx's symbolic
shapes and sympy), its flex attention and masks ``torch.nn.attention.flex_attention``
(sympy again), its object-detection losses ``scipy.optimize`` and image transforms
(torchvision); diffusers' schedulers import ``scipy.stats`` / ``scipy.integrate``, its LoRA
helpers peft, its single-file loader transformers' image processors, its downloads from a
URL requests. While one of those
*users* runs, :class:`_ModuleStandIn` stands in for the module: the names the user takes
are :func:`_call_later` functions (imported on the first call) or :func:`_class_later`
classes (nothing is an instance of one before its module is imported; calling one or
asking it for an attribute imports it); anyone else who asks, or a name not listed,
imports the real module. The stand-in leaves ``sys.modules`` as soon as the user has run,
so the libraries' later imports get the real module, and once that is imported
:func:`_flush_deferred` puts its own objects in the users' place. Two helpers diffusers
calls around every forward, and transformers' ``is_dtensor``, only look for instances
of a deferred module's classes: they return at once while it is not imported
(:data:`IDLE_UNTIL_IMPORTED`); transformers' registry of parallel styles imports the
modules that fill it when first read (:data:`FILLED_ON_READ`).

torch's meta-device kernels (transformers and diffusers build every model on the meta
device) and ``torch._check`` import torch.fx's symbolic shapes, and with it sympy, on every
call, for checks that on plain numbers need none of it: :class:`_SymbolicShapesStandIn`
answers those until something needs the real module (``torch.compile``, any other name).
transformers fills its model classes' docstrings as they are defined, from its registries
of processors, whose modules import its image utilities, which build tables of
torchvision's interpolation modes: while those registries are not imported, the
placeholders they would fill stay as they are (:func:`_docstrings_without_processors`,
transformers' own behaviour when one cannot be imported), so a run does not import
torchvision.

diffusers reads the file list of every installed distribution
(``importlib.metadata.packages_distributions``) as it is imported, and ``import
transformers`` reads every model folder to build its import table: together about a
second. :func:`packages_distributions` and transformers' ``define_import_structure`` keep
their results in Studio's cache folder (``studio.paths.cache_dir()``), read back while the
folders they depend on (``sys.path``'s, the model folders) have the same modification
times; a file that cannot be used is a scan again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Packages whose ``__init__`` imports (or, for transformers, scans) a whole family of
#: models or helpers.
LAZY_PACKAGES = (
    "diffusers.models.unets",
    "diffusers.models.transformers",
    "diffusers.models.autoencoders",
    "diffusers.models.controlnets",
    "diffusers.hooks",
    "transformers.models",
    "controlnet_aux",
)

_lock = threading.RLock()
_installed = False


class _LazyPackage(types.ModuleType):
    """A package whose ``__init__`` runs only when something asks it for a name."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name not in ("__all__", "__version__"):
            raise AttributeError(name)
        folder = Path(self.__path__[0])
        if (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file():
            return importlib.import_module(f"{self.__name__}.{name}")
        with _lock:
            state = self.__dict__
            if not state.get("_studio_complete"):
                state["_studio_complete"] = True
                self.__spec__.loader.exec_module(self)  # type: ignore[union-attr]
        try:
            return state[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


def _package_root(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)  # finds, does not import
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def install() -> None:
    """Put the lazy stand-ins and the dynamo import hook in place; cheap, idempotent, and
    a no-op for what is already imported."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        sys.meta_path.insert(0, _defer_dynamo)
        sys.meta_path.insert(0, _defer_imports)
        if SYMBOLIC_SHAPES not in sys.modules:
            sys.modules[SYMBOLIC_SHAPES] = _SymbolicShapesStandIn(SYMBOLIC_SHAPES)
            _attach_symbolic_stand_in()
        for name in LAZY_PACKAGES:
            top = name.split(".")[0]
            root = _package_root(top)
            if root is None or name in sys.modules:
                continue
            init = root.joinpath(*name.split(".")[1:], "__init__.py")
            if not init.is_file():
                continue
            spec = importlib.util.spec_from_file_location(
                name, init, submodule_search_locations=[str(init.parent)]
            )
            if spec is None or spec.loader is None:
                continue
            module = _LazyPackage(name)
            module.__spec__ = spec
            module.__file__ = str(init)
            module.__path__ = [str(init.parent)]
            module.__package__ = name
            module.__loader__ = spec.loader
            sys.modules[name] = module


#: Modules run without ``torch._dynamo``: diffusers' utils import its ``allow_in_graph``
#: (attention classes are marked with it); its offloading hooks decorate two methods with
#: ``torch.compiler.disable()``, which imports dynamo (and diffusers' ``ModelMixin.to``
#: and ``.device`` import those hooks: every run); transformers' ``modeling_utils`` marks a
#: method ``torch.compiler.allow_in_graph`` and imports its FP8 kernels, marked with ``allow_in_graph`` and ``assume_constant_result``, and its
#: flex attention, a method of which is marked ``torch.compiler.disable``; transformers'
#: image utilities import torchvision, whose ``roi_align`` imports a dynamo helper and
#: whose ``tv_tensors`` marks a function ``torch.compiler.disable``; transformers
#: masks (CLIP's among them) import ``torch._dynamo._trace_wrapped_higher_order_op``, a
#: module that needs nothing of dynamo's own ``__init__`` (it is loaded as it is, from its
#: file, under the stand-in package).
DYNAMO_USERS = (
    "diffusers.utils.torch_utils",
    "diffusers.hooks.group_offloading",
    "transformers.modeling_utils",
    "transformers.integrations.deepgemm",
    "transformers.integrations.finegrained_fp8",
    "transformers.integrations.flex_attention",
    "torchvision.ops.roi_align",
    "torchvision.tv_tensors",
    "transformers.masking_utils",
    "transformers.generation.continuous_batching.cache",
)
DYNAMO = "torch._dynamo"
#: What marks a function :func:`disable_later` wrapped: (fn, recursive, reason).
_MARK = "_studio_dynamo_disable_later"

#: Classes marked ``allow_in_graph`` before ``torch._dynamo`` was imported.
_pending_allow_in_graph: list[Any] = []


def _dynamo_ready() -> Any:
    """The real ``torch._dynamo`` once it is fully imported, else None."""
    module = sys.modules.get(DYNAMO)
    if module is None or isinstance(module, _DynamoStandIn):
        return None
    if getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


def allow_in_graph_later(fn: Any) -> Any:
    """``torch._dynamo.allow_in_graph``, now if dynamo is imported, else the moment it is
    (:class:`_DeferDynamo` calls :func:`_flush`). Returns ``fn`` itself, as the real
    decorator does."""
    dynamo = _dynamo_ready()
    if dynamo is not None:
        return dynamo.allow_in_graph(fn)
    with _lock:
        _pending_allow_in_graph.append(fn)
    return fn


def disable_later(fn: Any = None, recursive: bool = True, *, reason: Any = None) -> Any:
    """``torch._dynamo.disable`` (what ``torch.compiler.disable`` calls), now if dynamo is
    imported, else a wrapper that calls ``fn`` as it is (nothing can be compiling while
    dynamo is not imported) and the really disabled ``fn`` once it is. When dynamo is
    imported, :func:`_flush` also puts the really disabled function in the wrapper's place
    (module globals, class attributes), so ``torch.compile`` sees what it would have."""
    dynamo = _dynamo_ready()
    if dynamo is not None:
        return dynamo.disable(fn, recursive, reason=reason)
    if fn is None:
        return lambda f: disable_later(f, recursive, reason=reason)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        dynamo = _dynamo_ready()
        if dynamo is None:
            return fn(*args, **kwargs)
        real = wrapper.__dict__.get("_studio_disabled")
        if real is None:
            real = wrapper._studio_disabled = dynamo.disable(fn, recursive, reason=reason)  # type: ignore[attr-defined]
        return real(*args, **kwargs)

    setattr(wrapper, _MARK, (fn, recursive, reason))
    return wrapper


def assume_constant_result(fn: Any) -> Any:
    """``torch._dynamo.assume_constant_result``, which only marks ``fn`` (as here)."""
    fn._dynamo_marked_constant = True
    return fn


def _call_later(module: str, name: str) -> Any:
    """A function that calls ``module.name``, imported on the first call (where dynamo
    is imported anyway, :func:`_flush` puts the real one in its place)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(_import_real(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    setattr(call, _MARK_CALL, (module, name))
    return call


#: What marks a function :func:`_call_later` made: (module, name).
_MARK_CALL = "_studio_dynamo_call_later"

#: What the stand-ins give for each name; any other name imports the real dynamo.
STAND_IN_NAMES: dict[str, dict[str, Any]] = {
    DYNAMO: {
        "allow_in_graph": allow_in_graph_later,
        "disable": disable_later,
        "assume_constant_result": assume_constant_result,
    },
    DYNAMO + ".utils": {
        "is_compile_supported": _call_later(DYNAMO + ".utils", "is_compile_supported"),
    },
}


def _flush(dynamo: Any) -> None:
    """Hand dynamo what was deferred: ``allow_in_graph`` marks, disabled functions, and
    the real functions in the place of :func:`_call_later`'s."""
    with _lock:
        pending = list(_pending_allow_in_graph)
        _pending_allow_in_graph.clear()
    for fn in pending:
        dynamo.allow_in_graph(fn)
    # Submodules loaded under the stand-in: attributes of the real package, as if it had
    # imported them.
    prefix = DYNAMO + "."
    for name, module in list(sys.modules.items()):
        child = name[len(prefix) :]
        if name.startswith(prefix) and "." not in child and not hasattr(dynamo, child):
            setattr(dynamo, child, module)

    def real(value: Any) -> Any:
        if hasattr(value, _MARK_CALL):
            module, name = getattr(value, _MARK_CALL)
            return getattr(importlib.import_module(module), name)
        fn, recursive, reason = getattr(value, _MARK)
        return dynamo.disable(fn, recursive, reason=reason)

    def deferred(value: Any) -> bool:
        return hasattr(value, _MARK) or hasattr(value, _MARK_CALL)

    for name in DYNAMO_USERS:
        module = sys.modules.get(name)
        if module is None:
            continue
        for key, value in list(vars(module).items()):
            if deferred(value):
                setattr(module, key, real(value))
            elif isinstance(value, type) and value.__module__ == name:
                for attr, member in list(vars(value).items()):
                    if deferred(member):
                        setattr(value, attr, real(member))


class _DynamoStandIn(types.ModuleType):
    """What ``torch._dynamo`` (and ``torch._dynamo.utils``) is while one of
    :data:`DYNAMO_USERS` runs: the names of :data:`STAND_IN_NAMES` (what the real ones do,
    deferred); any other name imports the real module (which then replaces the
    stand-ins) and is taken from it."""

    def __getattr__(self, name: str) -> Any:
        given = STAND_IN_NAMES.get(self.__name__, {})
        if name in given:
            return given[name]
        if name.startswith("__"):
            raise AttributeError(name)
        _remove_stand_ins()
        return getattr(importlib.import_module(self.__name__), name)


def _put_stand_ins() -> list[_DynamoStandIn]:
    """Stand-ins in ``sys.modules`` for dynamo, unless it is imported (then none)."""
    with _lock:
        if DYNAMO in sys.modules:
            return []
        made = []
        for name in STAND_IN_NAMES:
            module = _DynamoStandIn(name)
            if name == DYNAMO:
                # A package: its submodules (those not stood in for) load from its folder.
                module.__path__ = _dynamo_path()
            sys.modules[name] = module
            made.append(module)
        return made


def _dynamo_path() -> list[str]:
    spec = importlib.util.find_spec("torch")  # finds, does not import
    if spec is None or not spec.submodule_search_locations:
        return []
    return [str(Path(next(iter(spec.submodule_search_locations))) / "_dynamo")]


def _remove_stand_ins() -> None:
    with _lock:
        for name in STAND_IN_NAMES:
            if isinstance(sys.modules.get(name), _DynamoStandIn):
                del sys.modules[name]


class _DeferDynamo(importlib.abc.MetaPathFinder):
    """An import hook (``sys.meta_path``) for the modules in :data:`DYNAMO_USERS` and
    ``torch._dynamo`` only; every other import is left to the other finders (None).

    - A module of :data:`DYNAMO_USERS` runs with a :class:`_DynamoStandIn` in
      ``sys.modules["torch._dynamo"]`` (unless dynamo is already imported), removed as soon
      as that module has run, so ``import torch._dynamo`` anywhere else, then or later,
      gets the real one.
    - ``torch._dynamo``: once the real module has run, :func:`_flush` hands it what was
      deferred, so ``torch.compile`` treats diffusers' classes and methods as if dynamo
      had been imported first.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != DYNAMO and fullname not in DYNAMO_USERS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real_exec = spec.loader.exec_module
        if fullname == DYNAMO:

            def exec_module(module: types.ModuleType) -> None:
                real_exec(module)
                _flush(module)

        else:

            def exec_module(module: types.ModuleType) -> None:
                made = _put_stand_ins()
                try:
                    real_exec(module)
                finally:
                    if made:
                        _remove_stand_ins()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_defer_dynamo = _DeferDynamo()


# -- torch.fx's symbolic shapes, for plain numbers ---------------------------------------------

SYMBOLIC_SHAPES = "torch.fx.experimental.symbolic_shapes"


def _real_symbolic_shapes() -> Any:
    """The real ``torch.fx.experimental.symbolic_shapes`` (imported now if need be: it imports
    sympy; about half a second on a small CPU)."""
    with _lock:
        if isinstance(sys.modules.get(SYMBOLIC_SHAPES), _SymbolicShapesStandIn):
            del sys.modules[SYMBOLIC_SHAPES]
    return importlib.import_module(SYMBOLIC_SHAPES)


def _guard_plain(name: str) -> Callable[..., Any]:
    """``name`` (``guard_or_false``, ``expect_true``, ...), which for a plain ``bool`` (not a
    ``SymBool``) returns it as it is; anything else goes to the real one."""

    def guard(a: Any, *args: Any, **kwargs: Any) -> Any:
        if type(a) is bool:
            return a
        return getattr(_real_symbolic_shapes(), name)(a, *args, **kwargs)

    guard.__name__ = guard.__qualname__ = name
    return guard


def _plain_ints(value: Any) -> bool:
    if type(value) in (int, bool):
        return True
    return isinstance(value, tuple | list) and all(_plain_ints(v) for v in value)


def _sym_eq(x: Any, y: Any) -> Any:
    """``sym_eq`` (``==``, element by element for sequences) on plain ints as the real one
    answers them; anything else goes to the real one."""
    if not (_plain_ints(x) and _plain_ints(y)):
        return _real_symbolic_shapes().sym_eq(x, y)
    if isinstance(x, tuple | list) and isinstance(y, tuple | list):
        if len(x) != len(y):
            return False
        return functools.reduce(lambda a, b: a & b, map(_sym_eq, x, y), True)
    if isinstance(x, tuple | list) or isinstance(y, tuple | list):
        return _real_symbolic_shapes().sym_eq(x, y)  # the real one's error
    return x == y


def _is_nested_int(s: Any) -> bool:
    """``is_nested_int``: only a ``SymInt`` can be one."""
    if type(s) in (int, float, bool):
        return False
    return _real_symbolic_shapes().is_nested_int(s)


#: What the stand-in answers itself, for plain numbers only.
_PLAIN_SYMBOLIC = {
    "expect_true": _guard_plain("expect_true"),
    "guard_or_false": _guard_plain("guard_or_false"),
    "guard_or_true": _guard_plain("guard_or_true"),
    "guard_size_oblivious": _guard_plain("guard_size_oblivious"),
    "sym_eq": _sym_eq,
    "is_nested_int": _is_nested_int,
}


class _SymbolicShapesStandIn(types.ModuleType):
    """``torch.fx.experimental.symbolic_shapes`` until something needs the real one.

    torch's Python kernels (its meta device, where transformers and diffusers build every
    model, and ``torch._check``) import a few helpers from it on each call, for plain numbers
    as much as for the symbolic ones of ``torch.compile``; importing it imports sympy. The
    stand-in gives those helpers (:data:`_PLAIN_SYMBOLIC`), which answer a plain
    ``bool``/``int`` exactly as the real ones do and hand anything else to the real module;
    any other name imports the real module, which then replaces the stand-in for good.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        real = sys.modules.get(SYMBOLIC_SHAPES)
        if real is not self and real is not None:
            return getattr(real, name)
        # Only to a function importing it as it runs (torch's kernels do, on every call);
        # a module's top level keeps what it imports: it gets the real one.
        if name in _PLAIN_SYMBOLIC and sys._getframe(1).f_code.co_name != "<module>":
            return _PLAIN_SYMBOLIC[name]
        return getattr(_real_symbolic_shapes(), name)


def _attach_symbolic_stand_in() -> None:
    """The stand-in as its package's attribute too (``torch.fx.experimental.symbolic_shapes.X``
    works as once the real one is imported), once that package is imported."""
    stand_in = sys.modules.get(SYMBOLIC_SHAPES)
    package = sys.modules.get(SYMBOLIC_SHAPES.rpartition(".")[0])
    attached = package is None or hasattr(package, "symbolic_shapes")
    if isinstance(stand_in, _SymbolicShapesStandIn) and not attached:
        package.symbolic_shapes = stand_in  # type: ignore[attr-defined]


# -- modules imported for names used only later ---------------------------------------------


@dataclass(frozen=True)
class Deferral:
    """``users`` import ``module`` when they are imported, but use it only later: in
    functions no run calls (the object-detection losses transformers imports for every
    model, scipy.stats for a scheduler's beta sigmas), or to check ``isinstance`` against its
    classes (no object is an instance of a class whose module is not imported yet).

    While one of ``users`` runs, :class:`_ModuleStandIn` stands in for ``module``:
    ``functions`` are :func:`_call_later` functions, ``classes`` :func:`_class_later`
    classes, and any other name imports the real module (then taken from it). Once the real
    module is imported, :func:`_flush_deferred` puts its own objects in the users' globals.
    """

    module: str
    users: tuple[str, ...]
    functions: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    #: A lazy package the users take the names from (``from transformers import X``),
    #: which keeps what its module gave it: the stand-ins are taken back from it.
    via: str | None = None
    #: Names the module only passes on from a module that is always imported (``name``,
    #: ``"module.attribute"``): the users get that very object.
    passed_on: tuple[tuple[str, str], ...] = ()


_DETECTION_LOSSES = tuple(
    f"transformers.loss.loss_{name}"
    for name in (
        "d_fine",
        "deformable_detr",
        "deimv2",
        "for_object_detection",
        "grounding_dino",
        "lw_detr",
        "rf_detr",
        "rt_detr",
    )
)

#: transformers' helpers for sharded loading, data parallelism and distributed
#: checkpoints: they use torch.distributed's tensors, placements and collectives in
#: functions (and annotations) only.
_TRANSFORMERS_DISTRIBUTED = tuple(
    f"transformers.distributed.{name}"
    for name in ("checkpoint", "fsdp", "parallel_utils", "sharding_utils")
)

#: What a run does without.
DEFERRALS = (
    # transformers' modeling_utils (every model) imports its distributed helpers
    # (_TRANSFORMERS_DISTRIBUTED); torch.distributed.tensor imports torch.fx's symbolic
    # shapes and sympy.
    Deferral(
        "torch.distributed.tensor",
        _TRANSFORMERS_DISTRIBUTED,
        functions=("distribute_tensor",),
        classes=("DTensor", "Partial", "Replicate", "Shard"),
    ),
    Deferral(
        "torch.distributed.tensor._utils",
        _TRANSFORMERS_DISTRIBUTED,
        functions=("compute_local_shape_and_global_offset",),
    ),
    Deferral(
        "torch.distributed.tensor.placement_types",
        _TRANSFORMERS_DISTRIBUTED,
        classes=("Shard", "_StridedShard"),
    ),
    Deferral(
        "torch.distributed._functional_collectives",
        _TRANSFORMERS_DISTRIBUTED,
        functions=("all_to_all_single_autograd", "wait_tensor"),
    ),
    Deferral(
        "torch.distributed.checkpoint.hf_storage",
        _TRANSFORMERS_DISTRIBUTED,
        classes=("HuggingFaceStorageReader", "HuggingFaceStorageWriter"),
    ),
    Deferral(
        "torch.distributed._composable.fsdp",
        _TRANSFORMERS_DISTRIBUTED,
        functions=("fully_shard",),
    ),
    Deferral(
        "torch.distributed.fsdp",
        _TRANSFORMERS_DISTRIBUTED,
        classes=("CPUOffloadPolicy", "MixedPrecisionPolicy"),
    ),
    # Its tensor- and expert-parallel styles are built (placements and all) as these two
    # modules are imported: they are imported when a model is parallelized, or something
    # reads the registry of styles (_fill_parallel_styles_on_read).
    Deferral(
        "transformers.distributed.tensor_parallel",
        (
            "transformers.distributed.mixin",
            "transformers.generation.utils",
            "transformers.modeling_utils",
            # peft imports it to learn whether transformers has DTensor parallelism
            "peft.import_utils",
        ),
        functions=(
            "apply_tensor_parallelism",
            "gather_state_dict_for_save",
            "get_kv_heads_per_rank",
            "verify_tp_plan",
        ),
    ),
    Deferral(
        "transformers.distributed.expert_parallel",
        ("transformers.distributed.mixin",),
        functions=("apply_expert_parallelism",),
    ),
    # torch's flex attention imports torch.fx's symbolic shapes and sympy; transformers
    # registers its flex attention function (called only if a model is set to use it) and
    # its masks check for and build flex BlockMasks (only for such a model).
    Deferral(
        "transformers.integrations.flex_attention",
        ("transformers.modeling_utils",),
        functions=("flex_attention_forward",),
    ),
    Deferral(
        "torch.nn.attention.flex_attention",
        ("transformers.masking_utils",),
        functions=("create_block_mask",),
        classes=("BlockMask",),
    ),
    # diffusers' single-file loading takes transformers' AutoImageProcessor (for the safety
    # checker of a full SD pipeline): image processors import torchvision.
    Deferral(
        "transformers.models.auto.image_processing_auto",
        ("diffusers.loaders.single_file_utils",),
        classes=("AutoImageProcessor",),
        via="transformers",
    ),
    # modeling_utils -> loss.loss_utils (the table of losses, read by every model's
    # __init__) -> the object-detection losses, whose Hungarian matching calls scipy.optimize
    # and whose boxes come from image_transforms (which imports torchvision).
    Deferral("scipy.optimize", _DETECTION_LOSSES, functions=("linear_sum_assignment",)),
    Deferral(
        "transformers.image_transforms",
        _DETECTION_LOSSES,
        functions=("center_to_corners_format",),
    ),
    # diffusers' schedulers `import scipy.stats` for beta sigmas (use_beta_sigmas), taken
    # as `scipy.stats` (scipy imports its submodules on first attribute access).
    Deferral(
        "scipy.stats",
        tuple(
            f"diffusers.schedulers.scheduling_{name}"
            for name in (
                "deis_multistep",
                "dpmsolver_multistep",
                "dpmsolver_multistep_inverse",
                "dpmsolver_sde",
                "dpmsolver_singlestep",
                "euler_discrete",
                "flow_match_euler_discrete",
                "flow_match_lcm",
                "heun_discrete",
                "k_dpm_2_ancestral_discrete",
                "k_dpm_2_discrete",
                "lms_discrete",
                "sasolver",
                "unipc_multistep",
            )
        ),
    ),
    Deferral("scipy.integrate", ("diffusers.schedulers.scheduling_lms_discrete",)),
    # spandrel's registry imports every architecture's model code to read an upscaler's
    # file; two of them (LaMa, an inpainter; RestoreFormer, a face restorer) take
    # torchvision's image functions, called only when such a model runs.
    Deferral(
        "torchvision.transforms.functional",
        ("spandrel.architectures.LaMa.__arch.LaMa", "spandrel.architectures.RestoreFormer"),
        functions=("normalize", "rotate"),
        classes=("InterpolationMode",),
    ),
    # diffusers downloads an image or a checkpoint's original config from a URL with
    # requests (the hub client itself uses httpx).
    Deferral(
        "requests",
        (
            "diffusers.loaders.single_file_utils",
            "diffusers.utils.loading_utils",
            "diffusers.utils.remote_utils",
        ),
    ),
    # transformers' masks check for its continuous-batching (serving) cache, whose
    # allocators import psutil.
    Deferral(
        "transformers.generation.continuous_batching.cache",
        ("transformers.masking_utils",),
        classes=("PagedAttentionCache",),
    ),
    # diffusers' utils offer loading a pipeline's own code from the hub (custom pipelines,
    # which Studio never runs), with huggingface_hub's folder and HTTP helpers.
    Deferral(
        "diffusers.utils.dynamic_modules_utils",
        ("diffusers.utils",),
        functions=("get_class_from_dynamic_module",),
    ),
    # transformers' model modules take typing's Unpack (for their keyword annotations) from
    # its processor utilities, which import its image utilities and torchvision.
    Deferral(
        "transformers.processing_utils",
        (
            "transformers.modeling_layers",
            *(
                f"transformers.models.{family}.modeling_{family}"
                for family in ("clip", "siglip", "t5")
            ),
        ),
        passed_on=(("Unpack", "typing.Unpack"),),
    ),
    # diffusers' LoRA helpers (every UNet and transformer derives from PeftAdapterMixin)
    # check modules against peft's BaseTunerLayer; peft is imported when a LoRA is loaded.
    Deferral(
        "peft.tuners.tuners_utils",
        ("diffusers.loaders.lora_base",),
        classes=("BaseTunerLayer",),
    ),
)

#: Functions (module, name) that import a module when called, only to look for instances
#: of its classes: while it is not imported there are none, and they return at once (the
#: value: that module, what they return then). diffusers calls these two around every UNet or transformer forward.
IDLE_UNTIL_IMPORTED: dict[tuple[str, str], tuple[str, Any]] = {
    ("diffusers.utils.peft_utils", "scale_lora_layers"): ("peft.tuners.tuners_utils", None),
    ("diffusers.utils.peft_utils", "unscale_lora_layers"): ("peft.tuners.tuners_utils", None),
    # transformers asks it of every weight it loads.
    ("transformers.distributed.utils", "is_dtensor"): ("torch.distributed.tensor", False),
}

#: Module flags (module, name) that say whether an instance check against a deferred
#: module's classes is worth making (the value: that module): false while it is not
#: imported, as nothing can be an instance then; its own value after. peft checks every
#: layer it wraps for a torch.distributed DTensor (``torch.distributed.tensor.DTensor``,
#: which would import torch's distributed tensors, torch.fx's symbolic shapes and sympy).
FALSE_UNTIL_IMPORTED: dict[tuple[str, str], str] = {
    ("peft.tuners.tuners_utils", "_torch_supports_distributed"): "torch.distributed.tensor",
}


class _FalseUntilImported:
    """A flag's value once ``module`` is imported, false before (:data:`FALSE_UNTIL_IMPORTED`)."""

    def __init__(self, value: Any, module: str) -> None:
        self.value, self.module = value, module

    def __bool__(self) -> bool:
        return bool(self.value) and _real_module(self.module) is not None

    def __repr__(self) -> str:
        return f"<{self.value!r} once {self.module} is imported>"


_DEFERRED = {d.module: d for d in DEFERRALS}
_USERS: dict[str, list[Deferral]] = {}
for _deferral in DEFERRALS:
    for _user in _deferral.users:
        _USERS.setdefault(_user, []).append(_deferral)
_IDLE: dict[str, list[tuple[str, str, Any]]] = {}
for (_user, _name), (_module, _result) in IDLE_UNTIL_IMPORTED.items():
    _IDLE.setdefault(_user, []).append((_name, _module, _result))


def _idle_until_imported(fn: Any, module: str, result: Any) -> Any:
    """``fn``, or ``result`` at once while ``module`` is not imported (see
    :data:`IDLE_UNTIL_IMPORTED`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _real_module(module) is None:
            return result
        return fn(*args, **kwargs)

    return wrapper


#: What marks a class :func:`_class_later` made: (module, name).
_MARK_CLASS = "_studio_class_later"


def _real_module(name: str) -> Any:
    """``sys.modules[name]`` when it is the real module, fully imported; else None."""
    module = sys.modules.get(name)
    if module is None or isinstance(module, _ModuleStandIn):
        return None
    if getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


def _import_real(name: str) -> Any:
    """The real module ``name``, imported (no stand-in left in the way)."""
    _remove_module_stand_ins()
    return importlib.import_module(name)


#: Registries (module, class) whose ``_global_mapping`` the deferred modules fill as they
#: are imported: the first read of it imports them.
FILLED_ON_READ = {
    ("transformers.distributed.parallel_utils", "ParallelInterface"): (
        "transformers.distributed.tensor_parallel",
        "transformers.distributed.expert_parallel",
    ),
}


class _FilledOnRead(dict):  # type: ignore[type-arg]
    """A registry's mapping that imports the modules that fill it when first read."""

    def __init__(self, data: dict[str, Any], modules: tuple[str, ...]) -> None:
        super().__init__(data)
        self._studio_modules = modules

    def _studio_fill(self) -> None:
        modules, self._studio_modules = self._studio_modules, ()
        for name in modules:
            _import_real(name)

    def __getitem__(self, key: Any) -> Any:
        self._studio_fill()
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self._studio_fill()
        return super().__contains__(key)

    def __iter__(self) -> Any:
        self._studio_fill()
        return super().__iter__()

    def __len__(self) -> int:
        self._studio_fill()
        return super().__len__()

    def get(self, key: Any, default: Any = None) -> Any:
        self._studio_fill()
        return super().get(key, default)

    def keys(self) -> Any:
        self._studio_fill()
        return super().keys()

    def values(self) -> Any:
        self._studio_fill()
        return super().values()

    def items(self) -> Any:
        self._studio_fill()
        return super().items()

    def copy(self) -> dict[str, Any]:
        self._studio_fill()
        return dict(self)


class _ClassLater(type):
    """The metaclass of :func:`_class_later`'s classes."""

    def _studio_real(cls) -> Any:
        module, name = type.__getattribute__(cls, _MARK_CLASS)
        return getattr(_import_real(module), name)

    def __instancecheck__(cls, obj: Any) -> bool:
        module, name = type.__getattribute__(cls, _MARK_CLASS)
        real = _real_module(module)
        return real is not None and isinstance(obj, getattr(real, name))

    def __subclasscheck__(cls, sub: Any) -> bool:
        module, name = type.__getattribute__(cls, _MARK_CLASS)
        real = _real_module(module)
        return real is not None and issubclass(sub, getattr(real, name))

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._studio_real()(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(cls._studio_real(), name)


def _class_later(module: str, name: str) -> Any:
    """A class standing for ``module.name``: nothing is an instance (or subclass) of it
    until ``module`` is imported, then what is one of the real class; calling it or asking
    it for an attribute imports ``module``."""
    return _ClassLater(name, (), {_MARK_CLASS: (module, name), "__module__": __name__})


def _importing_module() -> str | None:
    """The module whose top level is running (innermost on the stack), if any."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            return frame.f_globals.get("__name__")
        frame = frame.f_back
    return None


class _ModuleStandIn(types.ModuleType):
    """What a module of :data:`DEFERRALS` is in ``sys.modules`` while one of its users runs.

    It hands :func:`_call_later` functions and :func:`_class_later` classes to the users'
    top level only; for any other name, or anyone else (a module the user imports, a
    function called later), it imports the real module and answers from it: a lazy module.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        real = _real_module(self.__name__)
        if real is not None:
            return getattr(real, name)
        deferral = _DEFERRED[self.__name__]
        if sys.modules.get(self.__name__) is self and _importing_module() in deferral.users:
            if name in deferral.functions:
                return _call_later(self.__name__, name)
            if name in deferral.classes:
                return _class_later(self.__name__, name)
            for passed, origin in deferral.passed_on:
                if name == passed:
                    module, _, attribute = origin.rpartition(".")
                    return getattr(importlib.import_module(module), attribute)
        return getattr(_import_real(self.__name__), name)


def _put_module_stand_ins(user: str) -> list[str]:
    """Stand-ins in ``sys.modules`` for what ``user`` defers, unless imported (then none)."""
    made = []
    with _lock:
        for deferral in _USERS.get(user, ()):
            if deferral.module not in sys.modules:
                sys.modules[deferral.module] = _ModuleStandIn(deferral.module)
                made.append(deferral.module)
    return made


def _remove_module_stand_ins(names: Any = None) -> None:
    with _lock:
        for name in _DEFERRED if names is None else names:
            if isinstance(sys.modules.get(name), _ModuleStandIn):
                del sys.modules[name]


def _later_mark(value: Any) -> tuple[str, str] | None:
    """(module, name) of a :func:`_call_later` function or :func:`_class_later` class."""
    if isinstance(value, _ClassLater):
        return type.__getattribute__(value, _MARK_CLASS)
    if isinstance(value, types.FunctionType):
        return getattr(value, _MARK_CALL, None)
    return None


def _flush_deferred(module: types.ModuleType) -> None:
    """Put ``module`` and its own functions and classes in its users' globals, in place of
    its stand-in, :func:`_call_later`'s functions and :func:`_class_later`'s classes."""
    name = module.__name__
    for user in _DEFERRED[name].users:
        user_module = sys.modules.get(user)
        if user_module is None:
            continue
        for key, value in list(vars(user_module).items()):
            if isinstance(value, _ModuleStandIn) and value.__name__ == name:
                setattr(user_module, key, module)
                continue
            mark = _later_mark(value)
            if mark is not None and mark[0] == name and hasattr(module, mark[1]):
                setattr(user_module, key, getattr(module, mark[1]))


def _forget_later(deferral: Deferral) -> None:
    """Take back from ``deferral.via`` the stand-ins it kept for what a user asked it for,
    so the next to ask gets the real ones."""
    package = sys.modules.get(deferral.via) if deferral.via else None
    if package is None:
        return
    for key, value in list(vars(package).items()):
        mark = _later_mark(value)
        if mark is not None and mark[0] == deferral.module:
            delattr(package, key)


# -- scans kept on disk ------------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    """``value`` (dicts, sets, frozensets, tuples of str and numbers) as plain JSON, tagged
    so that :func:`_from_json` gives it back as it was."""
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"dict": {k: _to_json(v) for k, v in value.items()}}
        return {"pairs": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if isinstance(value, frozenset | set):
        kind = "frozenset" if isinstance(value, frozenset) else "set"
        return {kind: [_to_json(v) for v in sorted(value, key=repr)]}
    if isinstance(value, tuple | list):
        return {"tuple" if isinstance(value, tuple) else "list": [_to_json(v) for v in value]}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot keep a {type(value).__name__} in the import cache")


def _from_json(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    ((kind, inner),) = value.items()
    if kind == "dict":
        return {k: _from_json(v) for k, v in inner.items()}
    if kind == "pairs":
        return {_from_json(k): _from_json(v) for k, v in inner}
    items = [_from_json(v) for v in inner]
    return {"frozenset": frozenset, "set": set, "tuple": tuple, "list": list}[kind](items)


def _cached_scan(name: str, key: Any, scan: Callable[[], Any], where: Any = ()) -> Any:
    """``scan()``, kept in Studio's cache folder with ``key`` (what the result depends on)
    and read from there while ``key`` is the same. The file is JSON (reading it runs no
    code); any trouble with it: a scan. ``where`` (the folders scanned) picks the file, so
    that processes with other folders (the app and the command line, two installs) keep
    their own instead of scanning again in turn."""
    from studio.fsutil import atomic_write_bytes
    from studio.paths import cache_dir

    suffix = ""
    if where:
        digest = hashlib.sha256(json.dumps(_to_json(where)).encode("utf-8")).hexdigest()
        suffix = "-" + digest[:12]
    path = cache_dir() / "imports" / f"{name}{suffix}.json"
    try:
        saved = json.loads(path.read_bytes())
        if saved["key"] == _to_json(key):
            return _from_json(saved["value"])
    except Exception:  # none yet, unreadable, from another Python: scan again
        pass
    value = scan()
    try:
        data = json.dumps({"key": _to_json(key), "value": _to_json(value)})
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data.encode("utf-8"))
    except (OSError, TypeError):
        pass
    return value


def _mtimes(folder: str, suffixes: tuple[str, ...] = ()) -> tuple[Any, ...]:
    """``folder``'s modification time and its subfolders': a package installed, upgraded
    or removed there changes them. With ``suffixes``: only the entries (folders or files)
    whose names end with one of them, names and times (the folder's own time changes with
    any file made there)."""
    try:
        if suffixes:
            entries = sorted(
                (e.name, e.stat().st_mtime_ns)
                for e in os.scandir(folder)
                if e.name.endswith(suffixes)
            )
            return (folder, *entries)
        entries = sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_dir())
        return (folder, os.stat(folder).st_mtime_ns, *entries)
    except OSError:
        return (folder, None)


#: What ``packages_distributions`` reads in each ``sys.path`` entry (folders, or old-style
#: ``.egg-info`` files).
_DISTRIBUTION_FOLDERS = (".dist-info", ".egg-info")


def packages_distributions() -> dict[str, list[str]]:
    """``importlib.metadata.packages_distributions()`` (which reads the file list of every
    installed distribution: diffusers asks for it as it is imported), kept on disk while
    ``sys.path``, its folders and their distributions' folders are the same (only those: a
    run started in a busy folder does not scan again because a file there changed)."""
    folders = [p for p in sys.path if os.path.isdir(p or ".")]
    key = (sys.version, tuple(_mtimes(p, _DISTRIBUTION_FOLDERS) for p in folders))
    return _cached_scan(
        "packages_distributions", key, _real_packages_distributions, where=(sys.version, folders)
    )


_real_packages_distributions = importlib.metadata.packages_distributions


def _cached_define_import_structure(define: Any) -> Any:
    """transformers' ``define_import_structure``, which reads every model folder to build
    the import table of ``import transformers`` (about half a second); for that folder,
    kept on disk while its subfolders are the same."""

    @functools.wraps(define)
    def wrapper(module_path: Any, prefix: str | None = None) -> Any:
        folder = Path(module_path)
        if prefix != "models" or folder.name != "models":
            return define(module_path, prefix)
        key = (str(folder), prefix, _mtimes(str(folder)))
        return _cached_scan(
            "transformers_models", key, lambda: define(module_path, prefix), where=str(folder)
        )

    return wrapper


#: transformers' registries of processors, by the module of ``transformers.models.auto``
#: that holds each: importing them imports its image utilities (and torchvision).
PROCESSOR_REGISTRIES = (
    "image_processing_auto",
    "video_processing_auto",
    "feature_extraction_auto",
    "processing_auto",
)


def _docstrings_without_processors(get_placeholders: Any, module: types.ModuleType) -> Any:
    """transformers' ``get_placeholders_dict``, which fills a model class's docstring as the
    class is defined (``{image_processor_class}``, ``{processor_class}``, ...) from its
    registries: for a registry of processors not imported yet, the placeholder stays as it
    is, as transformers leaves it when a registry cannot be imported. Only the docstrings
    of a Studio process differ; the classes and what they do are the same."""

    @functools.wraps(get_placeholders)
    def wrapper(placeholders: Any, model_name: str) -> Any:
        table = getattr(module, "PLACEHOLDER_TO_AUTO_MODULE", {})
        skipped = {
            p
            for p in placeholders
            if p in table
            and table[p][0] in PROCESSOR_REGISTRIES
            and _real_module(f"transformers.models.auto.{table[p][0]}") is None
        }
        found = get_placeholders(set(placeholders) - skipped, model_name)
        return {**found, **{p: p for p in skipped}}

    return wrapper


def _patch_scans(module: types.ModuleType) -> None:
    """After transformers' import helpers run: their scans read from disk (diffusers'
    ``import_utils`` runs with :func:`packages_distributions` in importlib's place), and
    its docstrings are filled without importing its processors."""
    if module.__name__ == "transformers.utils.import_utils":
        module.define_import_structure = _cached_define_import_structure(
            module.define_import_structure
        )
        module._package_distribution_mapping = functools.cache(packages_distributions)
    elif module.__name__ == AUTO_DOCSTRING:
        module.get_placeholders_dict = _docstrings_without_processors(
            module.get_placeholders_dict, module
        )


AUTO_DOCSTRING = "transformers.utils.auto_docstring"
_SCANNED = {"diffusers.utils.import_utils", "transformers.utils.import_utils", AUTO_DOCSTRING}
_HOOKED = {
    SYMBOLIC_SHAPES.rpartition(".")[0],
    *_USERS,
    *_DEFERRED,
    *_IDLE,
    *_SCANNED,
    *(owner for owner, _ in FILLED_ON_READ),
    *(owner for owner, _ in FALSE_UNTIL_IMPORTED),
}


class _DeferImports(importlib.abc.MetaPathFinder):
    """An import hook for the modules of :data:`DEFERRALS` and their users only.

    - A user runs with :class:`_ModuleStandIn` in ``sys.modules`` for what it defers
      (unless that is imported), removed as soon as it has run, so any other import of
      those modules, then or later, gets the real ones.
    - A deferred module: once the real one has run, :func:`_flush_deferred`.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _HOOKED:
            return None
        # A module both hooks handle (transformers' modeling_utils) runs under both.
        spec = _defer_dynamo.find_spec(fullname, path, target)
        if spec is None:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real_exec = spec.loader.exec_module
        deferred = fullname in _DEFERRED
        user = fullname in _USERS

        def exec_module(module: types.ModuleType) -> None:
            made = _put_module_stand_ins(fullname) if user else []
            scanning = fullname == "diffusers.utils.import_utils"
            if scanning:
                importlib.metadata.packages_distributions = packages_distributions
            try:
                real_exec(module)
            finally:
                if scanning:
                    importlib.metadata.packages_distributions = _real_packages_distributions
                _remove_module_stand_ins(made)
                for deferral in _USERS.get(fullname, ()):
                    _forget_later(deferral)
            if deferred:
                _flush_deferred(module)
            _patch_scans(module)
            if fullname == SYMBOLIC_SHAPES.rpartition(".")[0]:
                _attach_symbolic_stand_in()
            for (owner, cls), modules in FILLED_ON_READ.items():
                if owner == fullname:
                    registry = getattr(module, cls)
                    registry._global_mapping = _FilledOnRead(registry._global_mapping, modules)
            for name, needs, result in _IDLE.get(fullname, ()):
                fn = getattr(module, name)
                setattr(module, name, _idle_until_imported(fn, needs, result))
            for (owner, name), needs in FALSE_UNTIL_IMPORTED.items():
                if owner == fullname and hasattr(module, name):
                    setattr(module, name, _FalseUntilImported(getattr(module, name), needs))

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_defer_imports = _DeferImports()


def diffusers_class(name: str) -> Any:
    """``diffusers.<name>`` (a model or scheduler class), importing only its own module."""
    install()
    import diffusers

    return getattr(diffusers, name)
