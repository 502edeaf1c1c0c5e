"""Models: parameter counts, output shapes, head levels, dtypes, fast layers, real steps."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgmask_jax.models import MODELS, create_model, create_trunk
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


@pytest.mark.parametrize(
    "size, kernel, strides, padding, routed",
    [
        (2, (3, 3), (1, 1), "SAME", True),  # ResNet's last stage at 64 px
        (8, (3, 3), (2, 2), ((1, 1), (1, 1)), True),  # 4x4 output: still small
        (5, (3, 3), (2, 2), "VALID", True),
        (16, (3, 3), (1, 1), ((1, 1), (1, 1)), False),  # large: the native conv
        (17, (3, 3), (2, 2), "SAME", False),  # native, padded unevenly; kernel grad by taps
        (14, (3, 3), (2, 2), "VALID", False),
        (20, (7, 7), (2, 2), ((3, 3), (3, 3)), False),  # ResNet's stem
        (16, (1, 1), (1, 1), "SAME", True),  # 1x1: a matrix product at any size
        (15, (1, 1), (2, 2), "SAME", True),  # ResNet's strided 1x1 downsample
    ],
)
def test_fast_conv_equals_flax_conv(size, kernel, strides, padding, routed):
    x = jax.random.normal(jax.random.key(1), (3, size, size, 6))
    fast = Conv(5, kernel, strides=strides, padding=padding)
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


def test_conv_as_matmul_without_bias_and_in_bfloat16():
    x = jax.random.normal(jax.random.key(2), (2, 3, 3, 4))
    kernel = jax.random.normal(jax.random.key(3), (3, 3, 4, 7))
    expected = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(conv_as_matmul(x, kernel, (1, 1), "SAME"), expected, atol=1e-5)
    layer = Conv(7, (3, 3), use_bias=False, dtype=jnp.bfloat16)
    variables = layer.init(KEY, x)
    assert set(variables["params"]) == {"kernel"}
    assert layer.apply(variables, x).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "shape, window, strides, padding",
    [
        ((2, 16, 16, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's stem pool
        ((2, 9, 9, 3), (2, 2), (2, 2), "VALID"),  # odd size: the last row is dropped
        ((2, 7, 5, 3), (3, 3), (2, 2), "SAME"),
    ],
)
def test_max_pool_equals_flax_with_ties(shape, window, strides, padding):
    # ReLU output has many tied zeros: the gradient must go where flax sends it.
    x = jax.nn.relu(jax.random.normal(jax.random.key(4), shape)).at[:, :3].set(0.0)
    expected = nn.max_pool(x, window, strides=strides, padding=padding)
    np.testing.assert_array_equal(max_pool(x, window, strides, padding), expected)
    weights = jax.random.normal(jax.random.key(5), expected.shape)
    grad = jax.grad(lambda x: jnp.sum(max_pool(x, window, strides, padding) * weights))(x)
    grad_ref = jax.grad(
        lambda x: jnp.sum(nn.max_pool(x, window, strides=strides, padding=padding) * weights)
    )(x)
    np.testing.assert_array_equal(grad, grad_ref)


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
