"""Pretrained backbones: the torch-free .pth reader and the ImageNet classifiers built from it."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports tensorflow

import collections
import io
import pathlib
import pickle
import struct
import tarfile
import zipfile
from typing import Any, Callable

import numpy as np
import pytest

from edgevision.domains.pth import WeightsError, load_state_dict

# ---------------------------------------------------------------------------------------------
# Hand-written torch pickles: stand-ins that make pickle emit torch's GLOBALs without torch.
# ---------------------------------------------------------------------------------------------


class _Global:
    """A callable written to the pickle as ``GLOBAL module name`` (never resolved here)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> None:  # pickle's save_reduce insists on a callable
        raise AssertionError("only for writing")


_REBUILD_V2 = _Global("torch._utils", "_rebuild_tensor_v2")
_FLOAT_STORAGE = _Global("torch", "FloatStorage")


class _Ref:
    """Written as a persistent id (torch's storage references)."""

    def __init__(self, pid: Any) -> None:
        self.pid = pid


class _Tensor:
    def __init__(self, storage: Any, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args = (storage, offset, size, stride)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_REBUILD_V2, (*self.args, False, collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler lets save() be overridden
    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if isinstance(obj, _Ref) else None

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


# Storage 0 holds 0..11; "a" is a transposed (non-contiguous) 3x2 view at offset 2, "b" a vector.
_DATA = np.arange(12, dtype=np.float32)
_EXPECTED = {
    "a": _DATA[2:8].reshape(2, 3).T,
    "b": _DATA[8:12],
}


def _write_zip(path: pathlib.Path) -> None:
    ref = _Ref(("storage", _FLOAT_STORAGE, "0", "cpu", 12))
    state = collections.OrderedDict(a=_Tensor(ref, 2, (3, 2), (1, 3)), b=_Tensor(ref, 8, (4,), (1,)))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", _dumps(state))
        zf.writestr("archive/data/0", _DATA.tobytes())


def _write_legacy(path: pathlib.Path) -> None:
    # Root storage "k0" plus a view "v0" of elements 8..11 of it, as torch < 1.6 wrote views.
    root = _Ref(("storage", _FLOAT_STORAGE, "k0", "cpu", 12, None))
    view = _Ref(("storage", _FLOAT_STORAGE, "k0", "cpu", 12, ("v0", 8, 4)))
    state = collections.OrderedDict(a=_Tensor(root, 2, (3, 2), (1, 3)), b=_Tensor(view, 0, (4,), (1,)))
    parts = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps({"little_endian": True}, protocol=2), _dumps(state), pickle.dumps(["k0"], protocol=2),
             struct.pack("<q", 12), _DATA.tobytes()]
    path.write_bytes(b"".join(parts))


def _write_tar(path: pathlib.Path) -> None:
    storages = b"".join([pickle.dumps(1, protocol=2), _dumps(("s0", "cpu", _FLOAT_STORAGE)),
                         struct.pack("<q", 12), _DATA.tobytes(), pickle.dumps([("s1", "s0", 8, 4)], protocol=2)])

    def tensor(key: str, storage: str, size: tuple[int, ...], stride: tuple[int, ...], offset: int) -> bytes:
        n = len(size)
        return (_dumps((key, storage, _Global("torch", "FloatTensor"))) + struct.pack("<ii", n, 0)
                + struct.pack(f"<{n}q", *size) + struct.pack(f"<{n}q", *stride) + struct.pack("<q", offset))

    tensors = pickle.dumps(2, protocol=2) + tensor("t0", "s0", (3, 2), (1, 3), 2) + tensor("t1", "s1", (4,), (1,), 0)

    # The tar layout's main pickle refers to the already-built tensors by key.
    state = collections.OrderedDict(a=_Ref("t0"), b=_Ref("t1"))
    members = {"sys_info": pickle.dumps({}, protocol=2), "pickle": _dumps(state), "storages": storages,
               "tensors": tensors}
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


@pytest.mark.parametrize("writer", [_write_zip, _write_legacy, _write_tar], ids=["zip", "legacy", "tar"])
def test_load_state_dict_round_trips_hand_made_files(tmp_path: pathlib.Path,
                                                     writer: Callable[[pathlib.Path], None]) -> None:
    path = tmp_path / "tiny.pth"
    writer(path)
    state = load_state_dict(path)
    assert list(state) == ["a", "b"]
    for key, expected in _EXPECTED.items():
        assert state[key].dtype == np.float32
        np.testing.assert_array_equal(state[key], expected)
    assert state["a"].flags.writeable  # an owned copy, not a view into the file buffer


_OS_SYSTEM = b"cos\nsystem\n(S'echo pwned > /dev/null'\ntR."


def test_restricted_unpickler_refuses_os_system(tmp_path: pathlib.Path) -> None:
    raw = tmp_path / "evil.pth"
    raw.write_bytes(_OS_SYSTEM)
    with pytest.raises(WeightsError, match="os.system") as info:
        load_state_dict(raw)
    assert str(raw) in str(info.value)

    zipped = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("archive/data.pkl", _OS_SYSTEM)
    with pytest.raises(WeightsError, match="os.system"):
        load_state_dict(zipped)


def test_missing_file_is_a_weights_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_state_dict(tmp_path / "nope.pth")


# ---------------------------------------------------------------------------------------------
# The four ImageNet classifiers.
# ---------------------------------------------------------------------------------------------

_CAT_IDS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
_COFFEE_IDS = {967, 968, 504}  # espresso, cup, coffee mug


def _backbones() -> dict[str, tuple[Callable[[], pathlib.Path | None], Callable[..., Any]]]:
    from edgevision.domains import efficientnet_lite as lite
    from edgevision.domains import mobilenet_v2 as mnv2

    table: dict[str, tuple[Callable[[], pathlib.Path | None], Callable[..., Any]]] = {
        f"efficientnet_lite{v}": (
            lambda v=v: lite.efficientnet_lite_weights_path(v),
            lambda w, v=v, **kw: lite.build_efficientnet_lite(v, w, **kw),
        )
        for v in (0, 1, 2)
    }
    table["mobilenet_v2"] = (mnv2.mobilenet_v2_weights_path, mnv2.build_mobilenet_v2)
    return table


_NAMES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"]


@pytest.fixture(scope="module", params=_NAMES)
def top5(request: pytest.FixtureRequest) -> dict[str, list[int]]:
    """Build one pretrained classifier (once per module) and return its top-5 ids per test image."""
    from PIL import Image
    from skimage import data

    locate, build = _backbones()[request.param]
    path = locate()
    if path is None:
        pytest.skip(f"{request.param}: its ImageNet weights package is not installed")
    model = build(load_state_dict(path), include_top=True)
    size = model.input_shape[1]
    images = {"chelsea": data.chelsea(), "coffee": data.coffee()}
    batch = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR), dtype=np.float32)
                      for im in images.values()])
    probs = model.predict(batch, verbose=0)
    return {name: [int(c) for c in np.argsort(p)[::-1][:5]] for name, p in zip(images, probs)}


@pytest.mark.slow
def test_recognises_the_cat(top5: dict[str, list[int]]) -> None:
    assert _CAT_IDS & set(top5["chelsea"]), top5["chelsea"]


@pytest.mark.slow
def test_recognises_the_coffee(top5: dict[str, list[int]]) -> None:
    assert _COFFEE_IDS & set(top5["coffee"]), top5["coffee"]


@pytest.mark.parametrize("name", _NAMES)
def test_random_init_layout(name: str) -> None:
    _, build = _backbones()[name]
    model = build(None, include_top=False, input_size=96)
    assert model.input.name.startswith("image")
    assert model.layers[1].name == "normalize"
    assert model.output_shape == (None, 1280)
    names = {layer.name for layer in model.layers}
    assert {"top_activation", "avg_pool", "block0_dw_conv"} <= names
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)


def test_mismatched_weights_are_refused() -> None:
    from edgevision.domains.mobilenet_v2 import build_mobilenet_v2, mobilenet_v2_weights_path

    path = mobilenet_v2_weights_path()
    if path is None:
        pytest.skip("mobilenet_v2: its ImageNet weights package is not installed")
    weights = load_state_dict(path)
    del weights["features.18.1.running_var"]
    weights["surplus.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match=r"features\.18\.1\.running_var.*surplus\.weight"):
        build_mobilenet_v2(weights)
