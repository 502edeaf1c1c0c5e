"""Fine-tuning from a torchvision-layout trunk: loading, freezing, the study's recipe."""

import jax
import numpy as np
import pytest
from test_train import final_state, tiny_config

from fgmask_jax import config_lib, models, train
from fgmask_jax.inference import export
from fgmask_jax.models import pretrained


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A ResNet-18 trunk (seed 7, non-trivial BatchNorm statistics) saved as torchvision does."""
    model = models.create_model("resnet18", {"gender": 2})
    variables = jax.jit(model.init)(jax.random.key(7), np.zeros((1, 32, 32, 3), np.float32))
    rng = np.random.default_rng(0)
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(lambda x: rng.uniform(0.5, 1.5, x.shape).astype(np.float32),
                                    variables["batch_stats"]),
    }
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    pretrained.export_torchvision(variables, "resnet18", str(path))
    return str(path), pretrained.load_torchvision(str(path), "resnet18")


def _part(tree, prefix):
    return {k: v for k, v in tree["trunk"].items() if k.startswith(prefix)}


def test_pretrained_trunk_with_frozen_stages(small_data_dir, tmp_path, resnet18_file):
    path, loaded = resnet18_file
    config = tiny_config(small_data_dir, model="resnet18", pretrained=path,
                         freeze="stem,layer1", num_train_steps=3, eval_every_steps=3)
    config_lib.validate(config)
    train.train_and_evaluate(config, str(tmp_path))
    _, state, _ = final_state(tmp_path)
    params, stats = state["params"]["model"], state["batch_stats"]
    for prefix in ("conv1", "bn1", "layer1_"):  # frozen: bitwise the file's, statistics too
        jax.tree.map(np.testing.assert_array_equal, _part(params, prefix),
                     _part({"trunk": loaded["params"]}, prefix))
    for prefix in ("bn1", "layer1_"):
        jax.tree.map(np.testing.assert_array_equal, _part(stats, prefix),
                     _part({"trunk": loaded["batch_stats"]}, prefix))
    for prefix in ("layer2_", "layer4_"):  # trained: moved away from the file
        moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), _part(params, prefix),
                             _part({"trunk": loaded["params"]}, prefix))
        assert any(jax.tree.leaves(moved))
    report = (tmp_path / "report.md").read_text()
    assert f"trunk started from the pretrained weights {path}" in report
    assert "frozen: stem,layer1 (" in report and "parameters trained" in report

    # Rerunning resumes the run's own checkpoint: the weights file is not read again.
    config.pretrained = str(tmp_path / "moved-away.safetensors")
    assert train.train_and_evaluate(config, str(tmp_path))["steps"] == 3

    # Back out in torchvision's layout: the trained trunk, array for array.
    out = export.export_trunk(str(tmp_path), str(tmp_path / "export"))
    assert out.endswith("resnet18_trunk.safetensors")
    again = pretrained.load_torchvision(out, "resnet18")
    jax.tree.map(np.testing.assert_array_equal, again["params"], params["trunk"])
    jax.tree.map(np.testing.assert_array_equal, again["batch_stats"], stats["trunk"])


def test_pretrained_of_another_architecture_names_both(small_data_dir, tmp_path,
                                                       resnet18_file):
    config = tiny_config(small_data_dir, model="resnet34", pretrained=resnet18_file[0])
    with pytest.raises(config_lib.ConfigError, match="resnet18 weights.*not resnet34"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints")
                                                               .iterdir())


def test_config_checks_pretrained_and_freeze(tmp_path):
    c = config_lib.neural_config("model=resnet18", tasks=("gender",))
    c.freeze = "layer9"
    with pytest.raises(config_lib.ConfigError, match="layer9.*stem, layer1"):
        config_lib.validate(c)
    c.freeze, c.pretrained = "", str(tmp_path / "absent.pth")
    with pytest.raises(config_lib.ConfigError, match="absent.pth'.*no such file"):
        config_lib.validate(c)
    c.model, c.pretrained = "cnn", __file__
    with pytest.raises(config_lib.ConfigError, match="not model='cnn'"):
        config_lib.validate(c)


def test_study_recipe_and_fine_tuning_defaults():
    c = config_lib.neural_config("recipe=study", tasks=("age_group", "gender", "expression"))
    assert (c.freeze, c.head_hidden, c.optimizer, c.lr_schedule, c.image_size) == (
        "stem,layer1,layer2", 1024, "adamw", "constant", 50)
    assert dict(c.loss_weights) == {"age_group": 1.0, "gender": 0.1, "expression": 0.1}
    assert c.learning_rate * c.batch_size / 256 == pytest.approx(1e-3)
    local = config_lib.neural_config("recipe=study,runlocal", tasks=("gender",))
    assert local.learning_rate * local.batch_size / 256 == pytest.approx(1e-3)
    tuned = config_lib.neural_config("pretrained=x.pth", tasks=("gender",))
    assert tuned.pretrained == "x.pth" and tuned.trunk_lr_multiplier == 0.1


def test_trunk_learning_rate_multiplier_scales_only_the_trunk():
    config = config_lib.neural_config("model=resnet18", tasks=("gender",))
    config.update(trunk_lr_multiplier=0.5, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                  warmup_epochs=0.0, lr_schedule="constant")
    tx, _ = train.make_optimizer(config, steps_per_epoch=10, total_steps=10)
    params = {"model": {"trunk": {"w": np.ones(3, np.float32)},
                        "heads": {"gender": {"w": np.ones(2, np.float32)}}},
              "log_vars": {"gender": np.zeros((), np.float32)}}
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    peak = config.learning_rate * config.batch_size / 256
    np.testing.assert_allclose(updates["model"]["trunk"]["w"], -0.5 * peak, rtol=1e-6)
    np.testing.assert_allclose(updates["model"]["heads"]["gender"]["w"], -peak, rtol=1e-6)
