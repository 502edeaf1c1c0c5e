import pytest

from fgmask_jax import config_lib


def test_variants_parse():
    c = config_lib.neural_config("data=synthetic,model=cnn,protocol=subject,size=50",
                                 tasks=("age_group", "gender", "expression"))
    assert (c.dataset, c.model, c.protocol, c.image_size) == (
        "synthetic_masked_faces", "cnn", "subject", 50)
    assert c.head_depths == {"age_group": 3, "gender": 2, "expression": 1}


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown config variant 'modle'.*model"):
        config_lib.neural_config("modle=cnn", tasks=("gender",))
    with pytest.raises(ValueError, match="resnet18"):
        config_lib.neural_config("model=resnet19", tasks=("gender",))


def test_runlocal_shrinks():
    c = config_lib.neural_config("runlocal", tasks=("gender",))
    assert c.runlocal and c.image_size <= 64


def test_split_variant():
    assert config_lib.split_variant("data=synthetic,task=gender,runlocal", "task", "age_group") == (
        "gender", "data=synthetic,runlocal")
