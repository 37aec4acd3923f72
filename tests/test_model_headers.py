"""Damaged or hostile model files: a safetensors header is checked field by field, and
anything wrong is a NodeError naming the file, never a raw exception (tiny files, CPU)."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from nodes import controlnet as controlnet_nodes  # noqa: E402
from nodes import upscale as upscale_nodes  # noqa: E402
from nodes.sdload import WeightsFile, read_safetensors_header  # noqa: E402
from studio.errors import NodeError  # noqa: E402
from studio.graph.workflow import Workflow  # noqa: E402


def _file(path: Path, header: bytes | str, data: bytes = b"", length: int | None = None) -> Path:
    raw = header.encode() if isinstance(header, str) else header
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


@pytest.fixture
def engine(tmp_path):
    from studio.engine import Engine
    from studio.library import installed_registry
    from studio.settings import Settings

    settings = Settings(models_root=str(tmp_path / "models"), output_dir=str(tmp_path / "out"))
    (settings.models_root_path / "checkpoints").mkdir(parents=True)
    return Engine(installed_registry(), settings=settings)


def _checkpoint_error(engine, name: str) -> str:
    wf = Workflow(engine.registry)
    node = wf.add_node("load_checkpoint", {"ckpt_name": name}).id
    result = engine.run(wf, targets=[node])
    return result.errors[node]


# -- the two headers of the report -------------------------------------------------------------


def test_a_header_that_is_a_list_names_the_file(engine):
    ckpts = engine.settings.models_root_path / "checkpoints"
    _file(ckpts / "listed.safetensors", '[{"dtype": "F32"}]')
    message = _checkpoint_error(engine, "listed.safetensors")
    assert "listed.safetensors" in message and "not a valid safetensors file" in message
    assert "the header is not a JSON object" in message
    assert "AttributeError" not in message


def test_an_infinite_offset_names_the_file(engine):
    ckpts = engine.settings.models_root_path / "checkpoints"
    header = '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, Infinity]}}'
    _file(ckpts / "endless.safetensors", header, b"\0" * 4)
    message = _checkpoint_error(engine, "endless.safetensors")
    assert "endless.safetensors" in message and "not a valid safetensors file" in message
    assert "Infinity" in message and "OverflowError" not in message


@pytest.mark.parametrize(
    ("header", "data", "what"),
    [
        ('{"__metadata__": ["a", "b"]}', b"", "__metadata__ is not an object of strings"),
        ('{"w": [1, 2]}', b"", "entry 'w' is not an object"),
        ('{"w": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}', b"\0" * 4, "shape"),
        ('{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', b"\0" * 4, "shape"),
        ('{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}', b"\0" * 4, "byte size"),
        ('{"w": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4, "dtype"),
        ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"", "shorter"),
        ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 8, "after"),
        ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}}', b"\0" * 4, "offsets"),
        ('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8, "gap"),
        (
            '{"w": {"dtype": "F32", "shape": [99999999999999999999], "data_offsets": [0, 4]}}',
            b"",
            "",
        ),
        ("{" * 100_000, b"", "not valid JSON"),
        (b'{"\xff": 1}', b"", "not valid JSON"),
    ],
)
def test_damaged_headers_say_what_is_wrong(tmp_path, header, data, what):
    path = _file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(NodeError) as err:
        read_safetensors_header(path, "checkpoint 'bad.safetensors'")
    message = str(err.value)
    assert message.startswith("checkpoint 'bad.safetensors': not a valid safetensors file (")
    assert what in message


def test_a_hostile_header_gives_a_short_message(tmp_path):
    deep = "[" * 900 + "]" * 900
    header = f'{{"{"k" * 1_000_000}": {{"dtype": {deep}, "shape": [1], "data_offsets": [0, 4]}}}}'
    path = _file(tmp_path / "long.safetensors", header, b"\0" * 4)
    with pytest.raises(NodeError) as err:
        read_safetensors_header(path, "long.safetensors")
    assert "unknown dtype of type list" in str(err.value) and len(str(err.value)) < 300


def test_header_lengths_past_the_file_or_the_cap_are_refused(tmp_path):
    short = _file(tmp_path / "a.safetensors", "{}", length=1000)
    with pytest.raises(NodeError, match="beyond the end of the file"):
        read_safetensors_header(short, "a")
    huge = _file(tmp_path / "b.safetensors", "{}", length=2**63)
    with pytest.raises(NodeError, match="over the limit of 100,000,000"):
        read_safetensors_header(huge, "b")
    (tmp_path / "c.safetensors").write_bytes(b"\x02\0\0")
    with pytest.raises(NodeError, match="file too short: 3 bytes"):
        read_safetensors_header(tmp_path / "c.safetensors", "c")


def test_a_real_file_reads_with_its_shapes_and_metadata(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file(
        {"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.float16), "e": torch.zeros(0)},
        str(path),
        metadata={"studio": "{}"},
    )
    shapes, metadata = read_safetensors_header(path, "ok")
    assert shapes == {"a": (2, 3), "b": (4,), "e": (0,)}
    assert metadata == {"studio": "{}"}
    assert WeightsFile(path, "ok").shapes == shapes


def test_controlnet_and_upscale_files_with_broken_headers_name_the_file(tmp_path):
    path = _file(tmp_path / "net.safetensors", "[1]")
    with pytest.raises(NodeError, match=r"^net.safetensors: not a valid safetensors file \("):
        controlnet_nodes._single_file_config(path)
    with pytest.raises(NodeError, match=r"^net.safetensors: not a valid safetensors file \("):
        upscale_nodes.read_state_dict(path)


def test_a_model_file_that_is_a_pipe_is_refused(tmp_path):
    import os
    import threading

    for name in ("pipe.safetensors", "pipe.ckpt"):
        os.mkfifo(tmp_path / name)
        errors: list[str] = []

        def read(name=name, errors=errors):
            try:
                WeightsFile(tmp_path / name, f"checkpoint '{name}'")
            except NodeError as exc:
                errors.append(str(exc))

        reader = threading.Thread(target=read, daemon=True)  # a read that blocks fails below
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), f"reading {name} never ends"
        assert errors == [
            f"checkpoint '{name}' is not a regular file (a device, pipe or socket): "
            f"{tmp_path / name}"
        ]


# -- pickles ------------------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_with_code_is_refused_naming_the_file(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": _Evil()}}, f)
    with pytest.raises(
        NodeError,
        match=r"^checkpoint 'evil.ckpt': refused, this pickled file holds more than weights, .*does not run code",
    ):
        WeightsFile(path, "checkpoint 'evil.ckpt'")
    assert "this must never run" not in capsys.readouterr().out


def test_a_damaged_ckpt_names_the_file(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"w": torch.zeros(64)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(NodeError, match=r"^checkpoint 'cut.ckpt': not a readable checkpoint"):
        WeightsFile(path, "checkpoint 'cut.ckpt'")


# -- fuzzing --------------------------------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "F4", "U8"]),
)
_json = st.recursive(
    _json_leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(
            st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "w", "x"]),
            kids,
            max_size=4,
        ),
    ),
    max_leaves=20,
)
_small_int = st.integers(min_value=-2, max_value=40)
_entry = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(["F32", "F16", "U8", "F4", "I64"]), _json_leaf),
        "shape": st.one_of(st.lists(_small_int, max_size=3), _json),
        "data_offsets": st.one_of(st.lists(_small_int, min_size=2, max_size=2), _json),
    }
)
_header = st.one_of(
    _json,
    st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__"]), st.one_of(_entry, _json)),
)


def _read_or_node_error(path: Path) -> dict | None:
    try:
        shapes, _ = read_safetensors_header(path, "fuzz")
    except NodeError as exc:
        assert str(exc).startswith("fuzz: ")
        return None
    return shapes


def _library_reads(path: Path, shapes: dict) -> None:
    # What the header check lets through, the safetensors library reads as it said.
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        names = f.keys()  # a safe_open is not iterable
        assert {k: tuple(f.get_slice(k).get_shape()) for k in names} == shapes


_fuzz = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_fuzz
@given(
    header=_header,
    data=st.binary(max_size=64),
    length_change=st.one_of(st.just(0), st.integers(-10, 10), st.just(2**64 - 1)),
)
def test_fuzzed_headers_give_a_node_error_or_a_readable_file(tmp_path, header, data, length_change):
    text = json.dumps(header)  # NaN and Infinity come out as JSON does not allow
    raw = text.encode()
    length = max(0, min(len(raw) + length_change, 2**64 - 1))
    path = _file(tmp_path / "fuzz.safetensors", raw, data, length)
    shapes = _read_or_node_error(path)
    if shapes is not None and "F4" not in text:
        _library_reads(path, shapes)


_BITS = {"F32": 32, "F16": 16, "U8": 8, "I64": 64, "BOOL": 8}


@st.composite
def _valid_then_mutated(draw) -> tuple[dict, bytes]:
    """A well-formed header and its data, then maybe one field replaced by anything."""
    tensors = draw(
        st.lists(
            st.tuples(
                st.text(min_size=1, max_size=6),
                st.sampled_from(sorted(_BITS)),
                st.lists(st.integers(0, 5), max_size=3),
            ),
            max_size=4,
            unique_by=lambda t: t[0],
        )
    )
    header: dict = {}
    at = 0
    for name, dtype, shape in tensors:
        size = _BITS[dtype] // 8
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + size]}
        at += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4)))
    if tensors and draw(st.booleans()):
        name = draw(st.sampled_from([t[0] for t in tensors]))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        header[name][field] = draw(_json)
    return header, bytes(at)


@_fuzz
@given(case=_valid_then_mutated(), cut=st.one_of(st.just(0), st.integers(0, 64)))
def test_fuzzed_fields_of_well_formed_headers(tmp_path, case, cut):
    header, data = case
    path = _file(tmp_path / "fuzz.safetensors", json.dumps(header), data)
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])
    shapes = _read_or_node_error(path)
    if shapes is not None:
        _library_reads(path, shapes)


@_fuzz
@given(
    cut=st.one_of(st.just(0), st.integers(min_value=0, max_value=200)),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
)
def test_mutated_real_files_give_a_node_error_or_a_readable_file(tmp_path, cut, flips):
    path = tmp_path / "real.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.float16)}, str(path))
    raw = bytearray(path.read_bytes())
    for at, value in flips:
        if at < len(raw):
            raw[at] = value
    path.write_bytes(bytes(raw[: len(raw) - cut]))
    shapes = _read_or_node_error(path)
    if shapes is not None:
        _library_reads(path, shapes)
