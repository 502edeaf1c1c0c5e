"""Models: parameter counts, output shapes, head levels, dtypes, fast layers, real steps,
and the two kernel choices ("cpu" and "xla") against each other."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgmask_jax import config_lib, errors, runs
from fgmask_jax.models import MODELS, create_model, create_trunk, resolve_kernels
from fgmask_jax.models.layers import Conv, conv_as_matmul, max_pool
from fgmask_jax.models.vgg import PooledDense, adaptive_avg_pool, adaptive_bins

TASKS = {"age_group": 4, "gender": 2, "expression": 3}
STUDY_DEPTHS = {"age_group": 3, "gender": 2, "expression": 1}
KEY = jax.random.key(0)


def abstract_variables(model, size=64, batch=2):
    """Variable shapes of model.init, traced without compiling."""
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init({"params": KEY, "dropout": KEY}, x, train=False), x)


def count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# torchvision's totals minus the classifier (ResNet: 512 or 2048 -> 1000; VGG: 4096 -> 1000).
@pytest.mark.parametrize(
    "name, trunk_params",
    [
        ("resnet18", 11_176_512),
        ("resnet34", 21_284_672),
        ("resnet50", 23_508_032),
        ("resnet101", 42_500_160),
        ("resnet152", 58_143_808),
        ("vgg16", 134_260_544),
        ("cnn", 3 * 9 * 10 + 10 + 10 * 9 * 20 + 20 + 20 * 9 * 30 + 30),
        ("resnet_tiny", 7 * 7 * 3 * 8 + 2 * 8 + 2 * (3 * 3 * 8 * 8 + 2 * 8)),
    ],
)
def test_trunk_parameter_counts(name, trunk_params):
    variables = abstract_variables(create_model(name, TASKS))
    assert count(variables["params"]["trunk"]) == trunk_params
    assert set(variables["params"]) == {"trunk", "heads"}
    assert ("batch_stats" in variables) == name.startswith("resnet")


def test_every_family_has_a_count():
    assert set(MODELS) == {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "cnn", "vgg16", "resnet_tiny"
    }  # fmt: skip


@pytest.mark.parametrize("name", MODELS)
def test_logits_per_task_at_64px(name):
    model = create_model(name, TASKS, head_hidden=16, dropout=0.1)
    variables = abstract_variables(model)
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert set(logits) == set(TASKS)
    for task, classes in TASKS.items():
        assert logits[task].shape == (2, classes)
        assert logits[task].dtype == jnp.float32
        assert variables["params"]["heads"][task]["hidden"]["kernel"].shape[1] == 16


def test_single_task_model_has_one_head():
    model = create_model("resnet_tiny", {"gender": 2})
    variables = abstract_variables(model)
    assert set(variables["params"]["heads"]) == {"gender"}
    assert variables["params"]["heads"]["gender"]["logits"]["kernel"].shape == (8, 2)


def test_cnn_heads_read_the_levels_given():
    heads = abstract_variables(create_model("cnn", TASKS, head_depths=STUDY_DEPTHS))
    heads = heads["params"]["heads"]
    assert heads["expression"]["logits"]["kernel"].shape == (10, 3)
    assert heads["gender"]["logits"]["kernel"].shape == (20, 2)
    assert heads["age_group"]["logits"]["kernel"].shape == (30, 4)
    top = abstract_variables(create_model("cnn", TASKS))["params"]["heads"]
    assert all(top[task]["logits"]["kernel"].shape[0] == 30 for task in TASKS)
    hidden = abstract_variables(
        create_model("cnn", TASKS, head_depths={"gender": 1}, head_hidden=32)
    )["params"]["heads"]
    assert hidden["gender"]["hidden"]["kernel"].shape == (10, 32)
    assert hidden["age_group"]["hidden"]["kernel"].shape == (30, 32)


def test_cnn_head_output_depends_only_on_its_level():
    model = create_model("cnn", TASKS, head_depths=STUDY_DEPTHS)
    x = jax.random.uniform(jax.random.key(1), (2, 20, 20, 3))
    variables = model.init(KEY, x, train=False)
    # Changing conv3 alone must leave the heads on conv1 and conv2 untouched.
    params = jax.tree.map(lambda a: a, variables["params"])
    params["trunk"]["conv3"]["kernel"] = params["trunk"]["conv3"]["kernel"] + 1.0
    before = model.apply(variables, x)
    after = model.apply({"params": params}, x)
    np.testing.assert_array_equal(before["expression"], after["expression"])
    np.testing.assert_array_equal(before["gender"], after["gender"])
    assert not np.allclose(before["age_group"], after["age_group"])


@pytest.mark.parametrize("name", ["resnet_tiny", "cnn", "resnet50", "vgg16"])
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
    model = create_model(name, TASKS, dtype=jnp.bfloat16, head_hidden=8)
    variables = abstract_variables(model)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert all(v.dtype == jnp.float32 for v in logits.values())
    features = jax.eval_shape(lambda v, x: model.apply(v, x, method="features"), variables, x)
    assert features.dtype == jnp.float32


def test_vgg_features_are_fc7():
    model = create_model("vgg16", TASKS)
    variables = abstract_variables(model, size=32)
    x = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)
    fc7 = jax.eval_shape(lambda v, x: model.apply(v, x, method="features"), variables, x)
    assert fc7.shape == (3, 4096)
    trunk = variables["params"]["trunk"]
    names = [f"conv{b}_{c}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for c in range(1, n + 1)]
    assert set(trunk) == {*names, "fc6", "fc7"}
    assert trunk["fc6"]["kernel"].shape == (512 * 7 * 7, 4096)
    alone = create_trunk("vgg16")
    shapes = jax.eval_shape(lambda x: alone.init(KEY, x), x)
    assert jax.tree.map(lambda a: a.shape, shapes["params"]) == jax.tree.map(
        lambda a: a.shape, trunk
    )


def test_resnet_names_follow_torchvision():
    trunk = abstract_variables(create_model("resnet18", TASKS))["params"]["trunk"]
    assert {"conv1", "bn1", "layer1_0", "layer1_1", "layer4_1"} <= set(trunk)
    assert "downsample_conv" not in trunk["layer1_0"]
    assert trunk["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 128)
    assert "bias" not in trunk["layer2_0"]["conv1"]
    bottleneck = abstract_variables(create_model("resnet50", TASKS))["params"]["trunk"]
    # v1.5: the 3x3 conv carries the stride; the first stage already projects 64 -> 256.
    assert bottleneck["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert bottleneck["layer1_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 256)


def test_unknown_model_name_lists_models():
    with pytest.raises(ValueError, match="resnet152.*resnet_tiny"):
        create_model("resnet9", TASKS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "resnet18", "head_depths": {"gender": 1}}, "only to model 'cnn'"),
        ({"name": "cnn", "head_depths": {"gender": 4}}, "levels are"),
        ({"name": "cnn", "head_depths": {"age": 1}}, "not in tasks"),
        ({"name": "cnn", "tasks": {}}, "tasks is empty"),
        ({"name": "cnn", "tasks": {"gender": 0}}, "at least one"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    kwargs = {"tasks": TASKS, **kwargs}
    with pytest.raises(ValueError, match=message):
        create_model(kwargs.pop("name"), kwargs.pop("tasks"), **kwargs)


def uses_native_conv(fn, *args):
    return "conv_general_dilated" in str(jax.make_jaxpr(fn)(*args))


CONV_SHAPES = [  # size, kernel, strides, padding, routed (to a matrix product by "cpu")
    (2, (3, 3), (1, 1), "SAME", True),  # ResNet's last stage at 64 px
    (8, (3, 3), (2, 2), ((1, 1), (1, 1)), True),  # 4x4 output: still small
    (5, (3, 3), (2, 2), "VALID", True),
    (16, (3, 3), (1, 1), ((1, 1), (1, 1)), False),  # large: the native conv
    (17, (3, 3), (2, 2), "SAME", False),  # native, padded unevenly; kernel grad by taps
    (14, (3, 3), (2, 2), "VALID", False),
    (20, (7, 7), (2, 2), ((3, 3), (3, 3)), False),  # ResNet's stem
    (16, (1, 1), (1, 1), "SAME", True),  # 1x1: a matrix product at any size
    (15, (1, 1), (2, 2), "SAME", True),  # ResNet's strided 1x1 downsample
]


@pytest.mark.parametrize("size, kernel, strides, padding, routed", CONV_SHAPES)
def test_fast_conv_equals_flax_conv(size, kernel, strides, padding, routed):
    x = jax.random.normal(jax.random.key(1), (3, size, size, 6))
    fast = Conv(5, kernel, strides=strides, padding=padding, kernels="cpu")
    reference = nn.Conv(5, kernel, strides=strides, padding=padding)
    variables = fast.init(KEY, x)
    # Same names, shapes and initial values: variables move between the two.
    jax.tree.map(np.testing.assert_array_equal, variables, reference.init(KEY, x))
    assert uses_native_conv(lambda x: fast.apply(variables, x), x) != routed

    def loss(module, variables, x):
        return jnp.sum(jnp.sin(module.apply(variables, x)))

    y_fast, y_ref = fast.apply(variables, x), reference.apply(variables, x)
    np.testing.assert_allclose(y_fast, y_ref, atol=1e-5, rtol=1e-5)
    g_fast = jax.grad(loss, argnums=(1, 2))(fast, variables, x)
    g_ref = jax.grad(loss, argnums=(1, 2))(reference, variables, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), g_fast, g_ref)


@pytest.mark.parametrize("size, kernel, strides, padding, routed", CONV_SHAPES)
def test_xla_conv_is_flax_conv(size, kernel, strides, padding, routed):
    """kernels="xla": nn.Conv's computation op for op (its jaxpr, so also its gradient's),
    with no custom VJP; the same variables as nn.Conv and as kernels="cpu"."""
    del routed
    x = jax.ShapeDtypeStruct((3, size, size, 6), jnp.float32)
    layers = [Conv(5, kernel, strides=strides, padding=padding, kernels=k) for k in ("xla", "cpu")]
    reference = nn.Conv(5, kernel, strides=strides, padding=padding)
    variables = jax.eval_shape(reference.init, KEY, x)
    for layer in layers:
        assert jax.eval_shape(layer.init, KEY, x) == variables

    def forward_and_vjp(module):
        return jax.make_jaxpr(lambda v, x: jax.vjp(module.apply, v, x))(variables, x)

    assert str(forward_and_vjp(layers[0])) == str(forward_and_vjp(reference))
    assert "custom_vjp" not in str(jax.make_jaxpr(layers[0].apply)(variables, x))


def test_conv_as_matmul_without_bias_and_in_bfloat16():
    x = jax.random.normal(jax.random.key(2), (2, 3, 3, 4))
    kernel = jax.random.normal(jax.random.key(3), (3, 3, 4, 7))
    expected = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(conv_as_matmul(x, kernel, (1, 1), "SAME"), expected, atol=1e-5)
    for kernels in ("cpu", "xla"):
        layer = Conv(7, (3, 3), use_bias=False, dtype=jnp.bfloat16, kernels=kernels)
        variables = jax.eval_shape(layer.init, KEY, x)
        assert set(variables["params"]) == {"kernel"}
        assert jax.eval_shape(layer.apply, variables, x).dtype == jnp.bfloat16


POOL_SHAPES = [
    ((2, 16, 16, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's stem pool
    ((2, 9, 9, 3), (2, 2), (2, 2), "VALID"),  # odd size: the last row is dropped
    ((2, 7, 5, 3), (3, 3), (2, 2), "SAME"),
]


@pytest.mark.parametrize("shape, window, strides, padding", POOL_SHAPES)
def test_max_pool_equals_flax_with_ties(shape, window, strides, padding):
    # ReLU output has many tied zeros: the gradient must go where flax sends it.
    x = jax.nn.relu(jax.random.normal(jax.random.key(4), shape)).at[:, :3].set(0.0)
    expected = nn.max_pool(x, window, strides=strides, padding=padding)
    np.testing.assert_array_equal(max_pool(x, window, strides, padding, "cpu"), expected)
    weights = jax.random.normal(jax.random.key(5), expected.shape)
    grad = jax.grad(lambda x: jnp.sum(max_pool(x, window, strides, padding, "cpu") * weights))(x)
    grad_ref = jax.grad(
        lambda x: jnp.sum(nn.max_pool(x, window, strides=strides, padding=padding) * weights)
    )(x)
    np.testing.assert_array_equal(grad, grad_ref)


@pytest.mark.parametrize("shape, window, strides, padding", POOL_SHAPES)
def test_xla_max_pool_is_flax_max_pool(shape, window, strides, padding):
    """kernels="xla": nn.max_pool (reduce_window, select_and_scatter in its gradient) op
    for op; kernels="cpu": a custom VJP."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)

    def forward_and_vjp(pool):
        return str(jax.make_jaxpr(lambda x: jax.vjp(pool, x))(x))

    def pool(kernels):
        return functools.partial(max_pool, window=window, strides=strides, padding=padding,
                                 kernels=kernels)

    assert forward_and_vjp(pool("xla")) == forward_and_vjp(
        lambda x: nn.max_pool(x, window, strides=strides, padding=padding))
    assert "custom_vjp" not in str(jax.make_jaxpr(pool("xla"))(x))
    assert "custom_vjp" in str(jax.make_jaxpr(pool("cpu"))(x))


def test_adaptive_avg_pool_matches_torchvision_bins():
    x = jax.random.normal(jax.random.key(6), (2, 7, 7, 3))
    assert adaptive_avg_pool(x, 7) is x
    # 14 -> 7: disjoint 2x2 bins.
    x14 = jax.random.normal(jax.random.key(7), (2, 14, 14, 3))
    expected = x14.reshape(2, 7, 2, 7, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(adaptive_avg_pool(x14, 7), expected, atol=1e-6)
    # 2 -> 7 (VGG at 64 px): torchvision's bins [0] x3, [0, 1], [1] x3.
    np.testing.assert_allclose(adaptive_bins(2, 7), [[1, 0]] * 3 + [[0.5, 0.5]] + [[0, 1]] * 3)
    x2 = jax.random.normal(jax.random.key(8), (1, 2, 2, 1))
    pooled = adaptive_avg_pool(x2, 7)
    np.testing.assert_allclose(pooled[0, 3, 3, 0], jnp.mean(x2), atol=1e-6)
    np.testing.assert_allclose(pooled[0, 6, 0, 0], x2[0, 1, 0, 0], atol=1e-6)


@pytest.mark.parametrize("side", [1, 2, 3, 7, 14])
def test_fc6_with_the_pool_folded_in_is_pool_then_dense(side):
    """VGG-16's fc6 on maps under 7x7 folds the pool into the kernel; values and gradients
    are torchvision's pool, channel-first flatten and Dense."""
    x = jax.random.normal(jax.random.key(9), (2, side, side, 8))
    fc6 = PooledDense(16)
    params = fc6.init(jax.random.key(10), x)["params"]

    def reference(params, x):
        flat = jnp.transpose(adaptive_avg_pool(x, 7), (0, 3, 1, 2)).reshape(2, -1)
        return nn.Dense(16).apply({"params": params}, flat)

    def folded(params, x):
        return fc6.apply({"params": params}, x)

    np.testing.assert_allclose(folded(params, x), reference(params, x), atol=1e-5)
    for got, want in zip(jax.grad(lambda p, x: folded(p, x).sum(), (0, 1))(params, x),
                         jax.grad(lambda p, x: reference(p, x).sum(), (0, 1))(params, x),
                         strict=True):
        jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-5), got, want)


@pytest.mark.parametrize("name", ["resnet_tiny", "cnn"])
def test_train_step_gives_finite_gradients_and_updates_batch_stats(name):
    model = create_model(name, TASKS, head_hidden=8, dropout=0.5, head_depths=None)
    x = jax.random.uniform(jax.random.key(9), (4, 32, 32, 3))
    labels = {task: jnp.arange(4) % classes for task, classes in TASKS.items()}
    variables = model.init({"params": KEY, "dropout": KEY}, x, train=False)
    state = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, **state},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(10)},
        )
        loss = sum(
            -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[t]), labels[t][:, None], 1))
            for t in TASKS
        )
        return loss, updates

    (loss, updates), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    assert np.isfinite(loss)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert np.all(np.isfinite(np.asarray(grads["trunk"]["conv1"]["kernel"])))
    assert float(jnp.abs(grads["trunk"]["conv1"]["kernel"]).sum()) > 0.0
    if name == "resnet_tiny":
        old, new = variables["batch_stats"]["trunk"], updates["batch_stats"]["trunk"]
        assert not np.allclose(old["bn1"]["mean"], new["bn1"]["mean"])
        assert not np.allclose(old["layer1_0"]["bn2"]["var"], new["layer1_0"]["bn2"]["var"])
        # Eval mode reads the running statistics and changes nothing.
        eval_logits = model.apply({**variables, **updates}, x, train=False)
        assert all(np.all(np.isfinite(v)) for v in eval_logits.values())
    else:
        assert "batch_stats" not in variables and not updates.get("batch_stats")


# --- the two kernel choices: "cpu" (fast paths for XLA:CPU, custom VJPs) and "xla" (XLA's own)


def random_variables(model, x, seed=0):
    """Variables of ``model`` shaped as ``model.init`` makes them, every array random (numpy:
    no init to compile), standing in for a trained checkpoint: uniform, with He-scaled
    kernels, BatchNorm scales and variances in [0.5, 1.5] (so no block is the identity)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda x: model.init(KEY, x, train=False), x)

    def uniform(shape):  # on [0, 1); arrays over 2**22 (VGG's fc6, fc7) repeat one block
        return np.resize(rng.random(min(int(np.prod(shape)), 2**22), np.float32), shape)

    def draw(path, leaf):
        if path[-1].key in ("scale", "var"):
            return 0.5 + uniform(leaf.shape)
        # Uniform on [-a, a] has variance a**2 / 3: 0.1**2 for biases and running means,
        # 2 / fan_in for kernels.
        std = 0.1 if len(leaf.shape) == 1 else np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        return np.float32(np.sqrt(3.0) * std) * (2 * uniform(leaf.shape) - 1)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def linear_loss(model, variables, x, train=False):
    """A fixed linear function of the logits, and the BatchNorm updates in train mode.

    Linear, so that the gradients compared below measure the kernels' numerics, not a loss's
    curvature amplifying float32 differences of the forward pass."""
    weights = {t: np.random.default_rng(7).standard_normal((x.shape[0], n)).astype(np.float32)
               for t, n in TASKS.items()}
    if train:
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
        logits, updates = model.apply(variables, x), {}
    return sum(jnp.sum(logits[t] * weights[t]) for t in TASKS), (logits, updates)


def relative_error(got, want):
    """||got - want|| / ||want|| over one array: robust to the elements near zero."""
    got, want = np.asarray(got), np.asarray(want)
    return float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30))


# XLA:CPU's LLVM optimisation off: the same optimised HLO (compared once by hand), compiled
# in half the time, run a little slower; these tests compile more than they run.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.cache
def images_and_variables(name, size=32, batch=2):
    """Images float32[batch, size, size, 3] and random variables of ``name``'s model."""
    x = jax.random.uniform(jax.random.key(11), (batch, size, size, 3))
    return x, random_variables(create_model(name, TASKS), x)


@functools.cache
def compiled_gradients(name, kernels):
    """(lowered, compiled, its result) of the eval-mode `linear_loss` and its gradients with
    respect to the variables and the images, jitted: the same inputs for both kernels.
    The result is ((loss, (logits, {})), (variable gradients, image gradients))."""
    x, variables = images_and_variables(name)
    model = create_model(name, TASKS, kernels=kernels)
    step = jax.value_and_grad(functools.partial(linear_loss, model), argnums=(0, 1),
                              has_aux=True)
    lowered = jax.jit(step).lower(variables, x)
    compiled = lowered.compile(FAST_COMPILE)
    return lowered, compiled, compiled(variables, x)


def test_kernels_are_resolved_when_the_model_is_built():
    assert resolve_kernels("cpu") == "cpu" and resolve_kernels("xla") == "xla"
    assert resolve_kernels("auto") == "cpu"  # the tests run on CPU
    assert resolve_kernels("auto", ("cpu", "cuda", "tpu")) == "xla"  # an export's targets
    assert resolve_kernels("auto", ("cuda",)) == resolve_kernels("auto", ("gpu",)) == "xla"
    with pytest.raises(ValueError, match="kernels='gpu' is not one of: auto, cpu, xla"):
        resolve_kernels("gpu")
    with pytest.raises(ValueError, match="kernels='auto'"):  # modules take it resolved
        Conv(3, (1, 1), kernels="auto").init(KEY, jnp.zeros((1, 2, 2, 1)))
    config = config_lib.neural_config("model=resnet_tiny", tasks=tuple(TASKS))
    assert config.kernels == "auto"
    assert runs.make_model(config).trunk.kernels == "cpu"
    assert runs.make_model(config, platforms=("cpu", "cuda")).trunk.kernels == "xla"
    config.kernels = "xla"
    assert runs.make_model(config).trunk.kernels == "xla"
    del config["kernels"]  # the config.json of a run from before the field: auto
    assert runs.make_model(config).trunk.kernels == "cpu"
    assert create_trunk("cnn").kernels == "cpu"
    assert create_trunk("vgg16", kernels="xla").kernels == "xla"
    config = config_lib.neural_config("model=cnn", tasks=tuple(TASKS))
    config.kernels = "gpu"
    with pytest.raises(errors.ConfigError,
                       match=r"^config.kernels='gpu' is not one of: auto, cpu, xla$"):
        config_lib.validate(config)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16", "cnn"])
def test_variables_are_the_same_in_both_kernels(name):
    """A checkpoint written with either kernels restores into the other: the same tree,
    names, shapes and dtypes. (Initial values are the same too: every conv's equal nn.Conv's,
    see test_fast_conv_equals_flax_conv.)"""
    trees = [abstract_variables(create_model(name, TASKS, kernels=k), size=32) for k in
             ("cpu", "xla")]
    assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
    assert jax.tree.leaves(trees[0]) == jax.tree.leaves(trees[1])


def test_xla_kernels_compile_without_conditionals_or_custom_vjps():
    """ResNet-18 with kernels="xla": no custom VJP in the train-mode jaxpr; in its forward
    and backward (eval mode: BatchNorm's mode changes no conv or pool), no `case` (what
    lax.platform_dependent lowers to) in the StableHLO, no `conditional` and no host
    callback in the compiled HLO. The "cpu" kernels keep their custom VJPs but no longer
    branch on the platform either."""
    x, variables = images_and_variables("resnet18")
    for kernels in ("xla", "cpu"):
        model = create_model("resnet18", TASKS, kernels=kernels)
        jaxpr = str(jax.make_jaxpr(functools.partial(linear_loss, model, train=True))(
            variables, x))
        assert ("custom_vjp" in jaxpr) == (kernels == "cpu")
        lowered, compiled, _ = compiled_gradients("resnet18", kernels)
        assert "stablehlo.case" not in lowered.as_text()
        assert not re.search(r"\bconditional\b", compiled.as_text())
        if kernels == "xla":
            assert "conv_general_dilated" in jaxpr and "reduce_window_max" in jaxpr
            assert "callback" not in compiled.as_text()
            assert "convolution" in compiled.as_text()


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "cnn"])
def test_xla_kernels_match_cpu_kernels(name):
    """Same variables and images (32 px, batch 2, eval mode), both kernels: logits and every
    gradient (variables and images) agree to 1e-5, each array's error relative to its norm.

    An honest float32 tolerance: the worst differences measured are 1.0e-6 (logits) and
    1.3e-6 (gradients) for ResNet-18, 2.1e-6 and 2.1e-6 for VGG-16, 0 and 2.3e-7 for the
    CNN, while each kernels' own distance to a float64 run of the same model is of the same
    size (up to 1.8e-6): rounding, not a different computation. Per-element relative checks
    would fail on elements near zero, hence norms. ReLU gradients jump where a
    pre-activation sits within rounding of zero (one in 8,192 did for another draw of
    VGG-16's variables); the fixed inputs here have none. ResNet-50 agrees too (2.3e-6,
    3.2e-6), checked by hand: its compile is too slow for the suite."""
    (loss_cpu, (logits_cpu, _)), grads_cpu = compiled_gradients(name, "cpu")[2]
    (loss_xla, (logits_xla, _)), grads_xla = compiled_gradients(name, "xla")[2]
    assert relative_error(loss_xla, loss_cpu) < 1e-5
    for task in TASKS:
        assert relative_error(logits_xla[task], logits_cpu[task]) < 1e-5, task
    errors_by_leaf = {jax.tree_util.keystr(path): relative_error(got, want) for (path, got), want
                      in zip(jax.tree_util.tree_leaves_with_path(grads_xla),
                             jax.tree.leaves(grads_cpu), strict=True)}
    worst = max(errors_by_leaf, key=errors_by_leaf.get)
    assert errors_by_leaf[worst] < 1e-5, (worst, errors_by_leaf[worst])


def test_forward_mode_autodiff_needs_the_xla_kernels():
    """jax.jvp through ResNet-18 with kernels="xla" agrees with its reverse-mode gradient
    (d loss along t = <grad, t>); the "cpu" kernels' custom VJPs refuse forward mode."""
    x, variables = images_and_variables("resnet18")
    model = create_model("resnet18", TASKS, kernels="xla")
    rng = np.random.default_rng(3)
    tangent = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), variables)
    forward_mode = jax.jit(lambda v, t: jax.jvp(
        lambda v: linear_loss(model, v, x)[0], (v,), (t,)))
    loss, slope = forward_mode.lower(variables, tangent).compile(FAST_COMPILE)(variables, tangent)
    (expected_loss, _), (grads, _) = compiled_gradients("resnet18", "xla")[2]
    expected = sum(jnp.vdot(g, t) for g, t in zip(jax.tree.leaves(grads),
                                                   jax.tree.leaves(tangent), strict=True))
    # Measured: 1e-6 (the loss: another compiled program) and 1.2e-7 (the slope).
    assert relative_error(loss, expected_loss) < 1e-5
    assert relative_error(slope, expected) < 1e-5
    cpu_model = create_model("resnet18", TASKS, kernels="cpu")
    with pytest.raises(TypeError, match="forward-mode autodiff.*custom_vjp"):
        jax.jvp(lambda v: linear_loss(cpu_model, v, x)[0], (variables,), (tangent,))
