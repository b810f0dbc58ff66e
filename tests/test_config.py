"""params.yaml is validated into typed config before any compute."""

from pathlib import Path

import pytest
import yaml

from skyedge.core.config import ConfigError, Params, load_params, resolve

REPO = Path(__file__).resolve().parents[1]


def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_committed_params_file_is_valid_in_every_profile():
    for profile in ("default", "tiny", "real"):
        assert isinstance(load_params(REPO / "params.yaml", profile=profile), Params)


def test_a_bad_choice_names_the_key_path_and_the_allowed_values():
    raw = raw_params()
    raw["quantize"]["candidates"]["static"]["weights"] = "int7"
    with pytest.raises(ConfigError) as error:
        resolve(raw)
    message = str(error.value)
    assert "quantize.candidates.static.static.weights" in message
    assert "'int8'" in message and "'uint8'" in message
    assert "int7" in message


def test_an_unknown_key_is_refused_with_its_path():
    raw = raw_params()
    raw["distill"]["epochz"] = 3
    with pytest.raises(ConfigError, match=r"distill\.epochz: Extra inputs are not permitted"):
        resolve(raw)


def test_out_of_range_values_and_inconsistent_splits_are_refused():
    raw = raw_params()
    raw["prune"]["structured"]["ratio"] = 1.5
    with pytest.raises(ConfigError, match=r"prune\.structured\.ratio"):
        resolve(raw)
    raw = raw_params()
    raw["ingest"]["split"] = {"train": 0.5, "val": 0.2, "test": 0.2, "holdout_stations": []}
    with pytest.raises(ConfigError, match=r"ingest\.split.*must be 1\.0"):
        resolve(raw)
    raw = raw_params()
    raw["embed"]["ensemble"] = [2, -1]  # a member fine-tuned for -1 epochs
    with pytest.raises(ConfigError, match=r"embed\.ensemble\.1"):
        resolve(raw)


def test_the_tiny_profile_overlays_without_editing_params_yaml():
    before = (REPO / "params.yaml").read_bytes()
    default, tiny = load_params(REPO / "params.yaml"), load_params(REPO / "params.yaml", profile="tiny")
    assert tiny.common.profile == "tiny"
    assert tiny.distill.epochs < default.distill.epochs
    assert tiny.data.image_size < default.data.image_size
    assert tiny.quantize.candidates["static"] == default.quantize.candidates["static"]  # untouched keys keep their value
    assert tiny.quantize.candidates["qat"].epochs < default.quantize.candidates["qat"].epochs  # one setting overlaid
    assert (REPO / "params.yaml").read_bytes() == before


def test_the_profile_can_be_chosen_in_params_as_dvc_exp_run_sets_it():
    raw = raw_params()
    raw["common"]["profile"] = "tiny"
    assert resolve(raw).distill.epochs == load_params(REPO / "params.yaml", profile="tiny").distill.epochs


def test_an_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"common\.profile: unknown profile 'huge'; allowed: default, fisheye, real, tiny"):
        load_params(REPO / "params.yaml", profile="huge")


def test_a_missing_key_is_named_and_says_where_values_live():
    raw = raw_params()
    del raw["distill"]["kd_alpha"]
    with pytest.raises(ConfigError, match=r"distill\.kd_alpha: missing: every value lives in params\.yaml"):
        resolve(raw)


def test_no_section_model_carries_a_default_of_its_own():
    """params.yaml is the one home of every value: a default in code would be a second one."""
    from pydantic import BaseModel

    from skyedge.core import config

    # None = "use the AWS environment"
    optional = {(source, name) for source in ("S3Source", "FleetSource") for name in ("endpoint_url", "region", "profile")} | {("Flow", "endpoint_url")}
    for name, model in vars(config).items():
        if isinstance(model, type) and issubclass(model, BaseModel) and model.__module__ == config.__name__:
            for field_name, field in model.model_fields.items():
                if (name, field_name) in optional:
                    assert field.default is None
                else:
                    assert field.is_required(), f"{name}.{field_name} has a default in code; give it its value in params.yaml"
