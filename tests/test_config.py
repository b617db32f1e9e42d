import pytest

from bnprivacy.config import ARCHS, NORMS, Config


@pytest.mark.parametrize("field, value, allowed", [
    ("dataset", "imagenet", "digits"),
    ("arch", "transformer", "resnet18"),
    ("norm", "instance", "group"),
    ("schedule", "step", "cosine"),
    ("device", "tpu", "cuda"),
    ("precision", "fp8", "bf16"),
])
def test_bad_choice_names_parameter_value_and_allowed_values(field, value, allowed):
    with pytest.raises(ValueError) as error:
        Config(**{field: value})
    message = str(error.value)
    assert f"Config.{field}" in message and repr(value) in message and allowed in message


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("epochs", -3), ("batch_size", 0), ("lr", 0.0), ("lr", -0.1),
    ("momentum", 1.0), ("label_smoothing", 1.0),
    ("width", -1), ("seed", -1), ("epochs", 2.5), ("epochs", True), ("lr", "0.1"),
    ("agc_clip", 0.0), ("agc_clip", -0.01), ("agc_clip", "0.01"),
])
def test_bad_numbers_are_rejected(field, value):
    with pytest.raises(ValueError, match=f"Config.{field}"):
        Config(**{field: value})


@pytest.mark.parametrize("field", ["lr", "momentum", "weight_decay", "label_smoothing", "agc_clip"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_rejected_before_training(field, value):
    with pytest.raises(ValueError, match=f"Config.{field}=.*allowed values: a finite number"):
        Config(**{field: value})


def test_batchnorm_needs_two_samples_per_batch():
    with pytest.raises(ValueError, match="at least two samples"):
        Config(norm="batch", batch_size=1)
    Config(norm="none", batch_size=1)


def test_missing_imagefolder_path_is_explained(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*ROOT/train/<class>"):
        Config(dataset=f"imagefolder:{tmp_path / 'nowhere'}")


def test_key_is_stable_and_sensitive_to_what_is_computed():
    assert Config().key() == Config().key()
    assert len(Config().key()) == 16
    assert Config(norm="none").key() != Config().key()
    assert Config(seed=1).key() != Config().key()
    # Where a run executes is not part of what it computes.
    assert Config(device="cpu").key() == Config(device="auto").key()
    assert Config().key() == Config.from_dict(Config().to_dict()).key()


def test_the_agc_threshold_is_in_the_key_of_normalizer_free_runs_only():
    # AGC runs under norm='nf' alone: a BN run is one run whatever threshold its Config carries,
    # so every run stored before the field existed keeps its key.
    assert Config(agc_clip=0.5).key() == Config().key()
    assert Config(norm="nf", agc_clip=0.5).key() != Config(norm="nf").key()
    assert Config(norm="nf", agc_clip=1).key() == Config(norm="nf", agc_clip=1.0).key()


def test_from_dict_rejects_unknown_parameters():
    with pytest.raises(ValueError, match="unknown Config parameter.*'epoch'"):
        Config.from_dict({"epoch": 3})


def test_config_is_frozen_and_replace_validates():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.norm = "none"
    assert cfg.replace(norm="none").norm == "none"
    with pytest.raises(ValueError):
        cfg.replace(norm="bogus")


def test_every_arch_and_norm_is_accepted():
    for arch in ARCHS:
        for norm in NORMS:
            Config(arch=arch, norm=norm)


@pytest.mark.parametrize("removed", ["target_accuracy", "max_epochs"])
def test_the_removed_stop_at_target_mode_is_explained(removed):
    with pytest.raises(ValueError, match="unknown Config parameter") as error:
        Config.from_dict({removed: 0.9 if removed == "target_accuracy" else 40})
    message = str(error.value)
    assert "stop-at-target-accuracy mode" in message and "removed" in message
    assert "mid-schedule snapshots" in message and "bnprivacy.protocol" in message


def test_other_unknown_parameters_do_not_mention_the_removed_mode():
    with pytest.raises(ValueError) as error:
        Config.from_dict({"epoch": 3})
    assert "protocol" not in str(error.value)


def test_the_data_key_follows_the_data_fields_only():
    base = Config(train_size=128)
    assert base.data_key() == base.replace(lr=0.5, norm="none", epochs=7).data_key()
    for change in (dict(seed=1), dict(train_size=256), dict(imbalance=4.0), dict(canaries="noise:2")):
        assert base.replace(**change).data_key() != base.data_key(), change
    assert Config(imbalance=10).data_key() == Config(imbalance=10.0).data_key()
