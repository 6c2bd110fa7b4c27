"""Run configuration: YAML round trip, overrides, canonical hash, clear errors."""
from pathlib import Path

import pytest

from fcdm.config import ConfigError, RunConfig, load_config

SMOKE = Path(__file__).resolve().parents[1] / "ablations" / "configs" / "smoke.yaml"


def test_smoke_config_loads_and_round_trips_through_yaml(tmp_path):
    cfg = load_config(SMOKE)
    assert cfg.model.args["hidden_size"] == 32 and cfg.objective.name == "flow"
    (tmp_path / "again.yaml").write_text(cfg.to_yaml())
    again = load_config(tmp_path / "again.yaml")
    assert again == cfg and again.hash == cfg.hash


def test_overrides_apply_with_yaml_typing():
    cfg = load_config(SMOKE, ["train.lr=2e-4", "model.args.kernel_size=3", "train.betas=[0.9, 0.95]"])
    assert cfg.train.lr == 2e-4 and cfg.model.args["kernel_size"] == 3 and cfg.train.betas == (0.9, 0.95)


def test_hash_ignores_seed_and_operational_keys_but_not_training_choices():
    base = load_config(SMOKE)
    same = ["seed=7", "name=other", "log.every=1", "log.checkpoint_every=5", "data.num_workers=2",
            "eval.num_samples=10", "eval.at=[1.0]"]
    for ov in same:
        assert load_config(SMOKE, [ov]).hash == base.hash, ov
    for ov in ["train.lr=2e-4", "model.args.kernel_size=3", "objective.name=ddpm", "train.steps=401",
               "train.mixed_precision=bf16", "data.image_size=16"]:
        assert load_config(SMOKE, [ov]).hash != base.hash, ov


def test_typo_gets_a_did_you_mean_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 0.001\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert str(bad) in msg and "train.lrr" in msg and "did you mean 'train.lr'" in msg


def test_wrong_type_names_key_value_and_reason():
    with pytest.raises(ConfigError, match=r"train.steps='many' is invalid: .*integer"):
        load_config(SMOKE, ["train.steps=many"])


def test_invalid_choice_lists_allowed_values():
    with pytest.raises(ConfigError, match="objective.name='score'.*'ddpm'.*'flow'"):
        load_config(SMOKE, ["objective.name=score"])
    with pytest.raises(ConfigError, match="eval.sampler='ddim'.*allowed values: euler, euler-sde"):
        load_config(SMOKE, ["eval.sampler=ddim"])


def test_latent_data_needs_a_path_and_derived_model_args_are_refused():
    with pytest.raises(ConfigError, match="data.path is required.*prepare-latents"):
        load_config(None, ["data.name=latent-array"])
    with pytest.raises(ConfigError, match="model.args.num_classes is set from the data"):
        load_config(None, ["model.args.num_classes=3"])


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(SMOKE, ["train.lr"])


def test_eval_steps_from_fractions_and_absolute_steps():
    cfg = RunConfig.model_validate({"train": {"steps": 400}, "eval": {"at": [0.25, 0.5, 1.0, 300, 1000]}})
    assert cfg.eval_steps() == [100, 200, 300, 400]


def test_learned_sigma_and_sampler_defaults_follow_the_objective():
    assert load_config(None).learn_sigma and load_config(None).sampler == "ddpm"
    flow = load_config(None, ["objective.name=flow"])
    assert not flow.learn_sigma and flow.sampler == "euler"


def test_a_renamed_config_is_the_same_run_with_the_same_checkpoints(tmp_path):
    from fcdm.tracking import checkpoint_dir

    a, b = load_config(SMOKE), load_config(SMOKE, ["name=renamed"])
    assert checkpoint_dir(tmp_path, a) == checkpoint_dir(tmp_path, b)
    assert checkpoint_dir(tmp_path, a) != checkpoint_dir(tmp_path, load_config(SMOKE, ["seed=1"]))
