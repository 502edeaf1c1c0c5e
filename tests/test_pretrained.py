"""Trunk weights in and out of torchvision's layout; freezing trunk parts.

The first part needs no torch. The second compares against torchvision itself
and runs where torch and torchvision are installed (skipped elsewhere).
"""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from fgmask_jax import models
from fgmask_jax.models import pretrained
from fgmask_jax.models.pretrained import WeightsError
from fgmask_jax.train import optim

TASKS = {"age_group": 4, "gender": 2}


def random_trunk(model: str, seed: int = 0) -> dict:
    """Trunk variables of `model` with random weights and non-trivial BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    variables = {"params": {}, "batch_stats": {}}
    for (collection, *modules, leaf), (shape, _) in pretrained.flax_shapes(model).items():
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif leaf in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # bias, mean
            value = rng.standard_normal(shape) * 0.1
        node = variables[collection]
        for module in modules:
            node = node.setdefault(module, {})
        node[leaf] = value.astype(np.float32)
    return variables


def model_variables(model: str, seed: int = 1) -> dict:
    """A full model's variables, every array random (numpy), in `create_model`'s structure."""
    shapes = jax.eval_shape(
        lambda: models.create_model(model, TASKS).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
        )
    )
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """resnet18 trunk variables (random) and their export."""
    variables = random_trunk("resnet18")
    path = str(tmp_path_factory.mktemp("weights") / "resnet18.safetensors")
    pretrained.export_torchvision(variables, "resnet18", path)
    return variables, path


def read(path):
    return pretrained.read_state_dict(path)


# ---------------------------------------------------------------- torch-free


def test_export_then_load_is_bitwise_equal(resnet18_file):
    variables, path = resnet18_file
    assert_trees_equal(pretrained.load_torchvision(path, "resnet18"), variables)


def test_export_writes_torchvision_keys_without_the_classifier(resnet18_file):
    _, path = resnet18_file
    state = read(path)
    # torchvision's resnet18 state dict has 122 keys: these 120 and fc.weight, fc.bias.
    assert len(state) == 120
    assert not any(k.startswith("fc.") for k in state)
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["layer2.0.downsample.1.running_var"].shape == (128,)
    assert state["layer4.1.bn2.num_batches_tracked"].dtype == np.int64
    assert {v.dtype for k, v in state.items() if "num_batches" not in k} == {np.dtype("float32")}
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        assert f.metadata() == {"format": "pt", "architecture": "resnet18"}


def test_vgg16_uses_torchvision_module_indices():
    names = pretrained.torch_names("vgg16")
    convs = sorted({int(k.split(".")[1]) for k in names if k.startswith("features.")})
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert names["features.28.weight"] == ("params", "conv5_3", "kernel")
    assert names["classifier.0.weight"] == ("params", "fc6", "kernel")
    assert names["classifier.3.bias"] == ("params", "fc7", "bias")
    assert pretrained.torchvision_shapes("vgg16")["classifier.0.weight"] == (4096, 512 * 7 * 7)
    face = pretrained.torchvision_shapes("vgg16", "vgg_face_dag")
    assert face["conv1_1.weight"] == (64, 3, 3, 3) and "fc7.bias" in face


def test_prefix_classifier_and_counters_are_dropped(resnet18_file, tmp_path):
    variables, path = resnet18_file
    state = {f"module.{k}": v for k, v in read(path).items()}
    state["module.fc.weight"] = np.ones((1000, 512), np.float32)
    state["module.fc.bias"] = np.ones(1000, np.float32)
    wrapped = str(tmp_path / "ddp.safetensors")
    save_file(state, wrapped)
    assert_trees_equal(pretrained.load_torchvision(wrapped, "resnet18"), variables)


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_half_precision_files_are_read_as_float32(resnet18_file, tmp_path, dtype):
    _, path = resnet18_file
    half = str(tmp_path / "half.safetensors")
    save_file({k: v.astype(dtype) if v.ndim else v for k, v in read(path).items()}, half)
    loaded = pretrained.load_torchvision(half, "resnet18")
    kernel = loaded["params"]["conv1"]["kernel"]
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(
        kernel, read(half)["conv1.weight"].astype(np.float32).transpose(2, 3, 1, 0)
    )


def edited(path, tmp_path, edit):
    state = read(path)
    edit(state)
    out = str(tmp_path / "edited.safetensors")
    save_file(state, out)
    return out


def test_a_missing_array_is_an_error(resnet18_file, tmp_path):
    path = edited(resnet18_file[1], tmp_path, lambda s: s.pop("layer3.1.bn2.running_var"))
    with pytest.raises(
        WeightsError,
        match=r"edited.safetensors.*\n.*missing "
        r"'layer3.1.bn2.running_var' \(expected shape \(256,\)\)",
    ):
        pretrained.load_torchvision(path, "resnet18")


def test_an_unexpected_array_is_an_error(resnet18_file, tmp_path):
    def add(state):
        state["layer1.0.extra.weight"] = np.zeros((3, 3), np.float32)

    path = edited(resnet18_file[1], tmp_path, add)
    with pytest.raises(
        WeightsError, match=r"unexpected 'layer1.0.extra.weight' \(shape \(3, 3\)\)"
    ):
        pretrained.load_torchvision(path, "resnet18")


def test_a_wrong_shape_names_both_shapes(resnet18_file, tmp_path):
    def reshape(state):
        state["layer2.1.conv1.weight"] = np.zeros((128, 128, 1, 1), np.float32)

    path = edited(resnet18_file[1], tmp_path, reshape)
    with pytest.raises(
        WeightsError,
        match=r"edited.safetensors: 1 problem.*\n.*"
        r"'layer2.1.conv1.weight' has shape \(128, 128, 1, 1\), "
        r"expected \(128, 128, 3, 3\)",
    ):
        pretrained.load_torchvision(path, "resnet18")


def test_integer_weights_are_an_error(resnet18_file, tmp_path):
    def to_int(state):
        state["bn1.weight"] = state["bn1.weight"].astype(np.int32)

    path = edited(resnet18_file[1], tmp_path, to_int)
    with pytest.raises(WeightsError, match="'bn1.weight' has dtype int32, expected a float"):
        pretrained.load_torchvision(path, "resnet18")


def test_another_architecture_is_named(resnet18_file, tmp_path):
    _, path = resnet18_file
    with pytest.raises(WeightsError, match="holds resnet18 weights .*, not resnet34"):
        pretrained.load_torchvision(path, "resnet34")
    with pytest.raises(WeightsError, match="holds resnet18 weights .*, not vgg16"):
        pretrained.load_torchvision(path, "vgg16")
    # resnet50 asked as resnet152: a file with resnet50's keys and shapes.
    shapes = pretrained.torchvision_shapes("resnet50")
    big = str(tmp_path / "resnet50.safetensors")
    save_file({k: np.zeros(s, np.float32) for k, s in shapes.items()}, big)
    with pytest.raises(WeightsError, match="holds resnet50 weights .*, not resnet152"):
        pretrained.load_torchvision(big, "resnet152")


def test_detect_architecture_names_relatives():
    def detect(model, layout=None):
        return pretrained.detect_architecture(pretrained.torchvision_shapes(model, layout))

    assert detect("resnet101") == ("resnet101", "resnet")
    assert detect("vgg16") == ("vgg16", "torchvision")
    assert detect("vgg16", "vgg_face_dag") == ("vgg16", "vgg_face_dag")
    vgg_bn = {
        f"features.{i}.{leaf}": (1,) for i in range(26) for leaf in ("weight", "running_mean")
    }
    assert pretrained.detect_architecture(vgg_bn)[0] == "vgg16_bn"
    wide = dict(pretrained.torchvision_shapes("resnet50"))
    wide["layer1.0.conv1.weight"] = (128, 64, 1, 1)
    assert "wide" in pretrained.detect_architecture(wide)[0]
    assert pretrained.detect_architecture({"a.weight": (1,)})[0].startswith("unknown")


def test_a_truncated_safetensors_file_is_an_error(resnet18_file, tmp_path):
    data = open(resnet18_file[1], "rb").read()
    for name, cut in (("tail.safetensors", len(data) - 100), ("head.safetensors", 20)):
        path = tmp_path / name
        path.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match=f"{name}: not a readable safetensors file"):
            pretrained.load_torchvision(str(path), "resnet18")


def test_a_pth_file_without_torch_gives_the_conversion_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    path = tmp_path / "resnet50.pth"
    path.write_bytes(b"PK\x03\x04 not read")
    with pytest.raises(WeightsError) as error:
        pretrained.load_torchvision(str(path), "resnet50")
    message = str(error.value)
    assert message.startswith(f"{path}: reading a PyTorch file needs torch")
    assert f"torch.load('{path}', weights_only=True, map_location='cpu')" in message
    assert f"'{tmp_path / 'resnet50.safetensors'}'" in message


def test_other_files_and_models_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.safetensors"):
        pretrained.load_torchvision(str(tmp_path / "none.safetensors"), "resnet18")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(WeightsError, match="w.npz: unknown weights format"):
        pretrained.load_torchvision(str(tmp_path / "w.npz"), "resnet18")
    with pytest.raises(ValueError, match="no torchvision layout for model 'cnn'"):
        pretrained.load_torchvision(str(tmp_path / "w.npz"), "cnn")


# Writes and reads a full-size VGG-16 file (277 MB, about 10 s): run with the torchvision
# comparisons, in the environment that has torch.
@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="full-size file: runs with the torchvision comparisons, where torch is installed",
)
def test_vgg_face_dag_files_load_as_the_vgg_face_loader_reads_them(tmp_path):
    from fgmask_jax.baselines import vgg_face

    rng = np.random.default_rng(8)
    shapes = pretrained.torchvision_shapes("vgg16", "vgg_face_dag")
    state = {k: rng.integers(-999, 999, s, np.int16).astype(np.float16) for k, s in shapes.items()}
    state["fc8.weight"] = np.zeros((2622, 4096), np.float16)  # the classifier: dropped
    path = str(tmp_path / "vgg_face.safetensors")
    save_file(state, path)
    loaded = pretrained.load_torchvision(path, "vgg16")
    assert loaded["batch_stats"] == {}
    assert_trees_equal(loaded["params"], vgg_face.load_vgg_face(path))


def test_with_pretrained_trunk_replaces_the_trunk_and_keeps_the_heads(resnet18_file, tmp_path):
    trunk, path = resnet18_file
    before = model_variables("resnet18")
    after, description = pretrained.with_pretrained_trunk(before, path, "resnet18")
    assert_trees_equal(after["params"]["trunk"], trunk["params"])
    assert_trees_equal(after["batch_stats"]["trunk"], trunk["batch_stats"])
    assert_trees_equal(after["params"]["heads"], before["params"]["heads"])
    assert description == (
        f"resnet18 trunk from {path}: 100 arrays (11,176,512 parameters); "
        "heads age_group, gender freshly initialised"
    )
    # And back out: the model's variables export to the same file contents.
    again = str(tmp_path / "again.safetensors")
    pretrained.export_torchvision(after, "resnet18", again)
    np.testing.assert_equal(read(again), read(path))


def test_the_model_must_match_the_file(resnet18_file):
    with pytest.raises(WeightsError, match="differ at"):
        pretrained.with_pretrained_trunk(
            model_variables("resnet_tiny"), resnet18_file[1], "resnet18"
        )


def test_export_of_full_model_variables(tmp_path):
    variables = model_variables("resnet18")
    path = str(tmp_path / "full.safetensors")
    keys = pretrained.export_torchvision(variables, "resnet18", path)
    assert len(keys) == 120
    loaded = pretrained.load_torchvision(path, "resnet18")
    assert_trees_equal(loaded["params"], variables["params"]["trunk"])
    assert_trees_equal(loaded["batch_stats"], variables["batch_stats"]["trunk"])
    with pytest.raises(WeightsError, match="lack params/bn1/bias of resnet34"):
        wrong = {"params": {"trunk": {}}, "batch_stats": {}}
        pretrained.export_torchvision(wrong, "resnet34", str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="end the path with .safetensors"):
        pretrained.export_torchvision(variables, "resnet18", str(tmp_path / "x.pth"))


def test_freeze_mask_of_a_resnet():
    params = model_variables("resnet18")["params"]
    mask = optim.freeze_mask(params, "resnet18", "stem, layer2")
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    trunk = mask["trunk"]
    frozen = {m for m, sub in trunk.items() if all(jax.tree.leaves(sub))}
    assert frozen == {"conv1", "bn1", "layer2_0", "layer2_1"}
    assert not any(jax.tree.leaves({m: s for m, s in trunk.items() if m not in frozen}))
    assert not any(jax.tree.leaves(mask["heads"]))
    assert not any(jax.tree.leaves(optim.freeze_mask(params, "resnet18", "")))
    assert all(jax.tree.leaves(optim.freeze_mask(params, "resnet18", "trunk")["trunk"]))
    stats = model_variables("resnet18")["batch_stats"]
    stats_mask = optim.freeze_mask(stats, "resnet18", "layer4")
    assert stats_mask["trunk"]["layer4_1"]["bn2"] == {"mean": True, "var": True}
    assert stats_mask["trunk"]["bn1"] == {"mean": False, "var": False}


def test_freeze_mask_of_vgg16_and_the_study_cnn():
    params = jax.eval_shape(
        lambda: models.create_model("vgg16", TASKS).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
        )
    )["params"]
    mask = optim.freeze_mask(params, "vgg16", "block1,block5,fc6")
    frozen = sorted(m for m, sub in mask["trunk"].items() if all(jax.tree.leaves(sub)))
    assert frozen == ["conv1_1", "conv1_2", "conv5_1", "conv5_2", "conv5_3", "fc6"]
    assert models.frozen_parts("cnn", "conv2,conv1") == ("conv1", "conv2")


@pytest.mark.parametrize(
    "model, freeze, valid",
    [
        ("resnet50", "layer5", "stem, layer1, layer2, layer3, layer4"),
        ("vgg16", "conv1", "block1, block2, block3, block4, block5, fc6, fc7"),
        ("resnet_tiny", "stem,layer2", "stem, layer1"),
    ],
)
def test_an_unknown_part_lists_the_valid_ones(model, freeze, valid):
    with pytest.raises(ValueError, match=f"not a part of {model}; its parts are {valid} "):
        models.frozen_parts(model, freeze)


# ---------------------------------------------------------------- against torchvision
# Run where torch and torchvision are installed (not in the main environment).


def torchvision_model(model: str, seed: int):
    """A torchvision trunk in eval mode: random weights and BatchNorm statistics, no classifier."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    net = getattr(torchvision.models, model)()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def drop_classifier(net):
    import torch

    if hasattr(net, "fc"):
        net.fc = torch.nn.Identity()
    else:  # VGG: up to fc7's ReLU (and its dropout, off in eval mode), as our trunk ends
        net.classifier[6] = torch.nn.Identity()
    return net


def torch_features(net, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def our_features(model: str, variables: dict, images: np.ndarray) -> np.ndarray:
    trunk = models.create_trunk(model)
    return np.asarray(trunk.apply(variables, jnp.asarray(images), train=False))


def assert_close(ours, theirs, rtol=1e-5):
    scale = np.abs(theirs).max()
    assert scale > 0
    assert np.abs(ours - theirs).max() <= rtol * scale, np.abs(ours - theirs).max() / scale


IMAGES = np.random.default_rng(3).standard_normal((2, 64, 64, 3)).astype(np.float32)


@pytest.mark.parametrize("model", ["resnet18", "resnet50", "resnet152", "vgg16"])
def test_imported_weights_give_torchvision_features(model, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as torch_save_file

    net = torchvision_model(model, seed=4)
    state = net.state_dict()  # with the classifier, as torchvision saves it
    torch.save(state, tmp_path / "w.pth")
    torch_save_file(state, str(tmp_path / "w.safetensors"))
    expected = torch_features(drop_classifier(net), IMAGES)
    for name in ("w.pth", "w.safetensors"):
        variables = pretrained.load_torchvision(str(tmp_path / name), model)
        assert_close(our_features(model, variables, IMAGES), expected)


@pytest.mark.parametrize("model", ["resnet50", "vgg16"])
def test_exported_weights_load_into_torchvision(model, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    variables = random_trunk(model, seed=5)
    path = str(tmp_path / "ours.safetensors")
    pretrained.export_torchvision(variables, model, path)
    state = load_file(path)
    net = torchvision_model(model, seed=6)
    result = net.load_state_dict(state, strict=False)
    classifier = (
        ["fc.weight", "fc.bias"]
        if model == "resnet50"
        else ["classifier.6.weight", "classifier.6.bias"]
    )
    assert sorted(result.missing_keys) == sorted(classifier)
    assert result.unexpected_keys == []
    drop_classifier(net).load_state_dict(state)  # strict
    assert next(net.parameters()).dtype == torch.float32
    assert_close(our_features(model, variables, IMAGES), torch_features(net, IMAGES))


def test_pth_checkpoints_with_a_state_dict_inside_are_read(tmp_path):
    torch = pytest.importorskip("torch")
    net = torchvision_model("resnet18", seed=7)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    variables = pretrained.load_torchvision(str(tmp_path / "ckpt.pth"), "resnet18")
    np.testing.assert_array_equal(
        variables["batch_stats"]["layer3_1"]["bn2"]["var"],
        net.layer3[1].bn2.running_var.numpy(),
    )


class NotATensor:
    """A pickled object that `torch.load(weights_only=True)` must refuse."""


def test_pth_with_pickled_objects_or_cut_short_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"conv1.weight": torch.zeros(1), "hook": NotATensor()}, tmp_path / "obj.pth")
    with pytest.raises(WeightsError, match=r"obj.pth: holds pickled Python objects .*weights_only"):
        pretrained.load_torchvision(str(tmp_path / "obj.pth"), "resnet18")
    torch.save({"conv1.weight": torch.zeros(1000)}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.pth: cannot be read as a PyTorch file"):
        pretrained.load_torchvision(str(tmp_path / "cut.pth"), "resnet18")
    torch.save({"epoch": 3, "conv1.weight": torch.zeros(1)}, tmp_path / "mixed.pth")
    with pytest.raises(WeightsError, match="entry 'epoch' is a int, not a tensor"):
        pretrained.load_torchvision(str(tmp_path / "mixed.pth"), "resnet18")
