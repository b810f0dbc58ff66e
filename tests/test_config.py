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
    raw["quantize"]["weight_type"] = "int7"
    with pytest.raises(ConfigError) as error:
        resolve(raw)
    message = str(error.value)
    assert "quantize.weight_type" in message
    assert "'int8'" in message and "'uint8'" in message
    assert "int7" in message


def test_an_unknown_key_is_refused_with_its_path():
    raw = raw_params()
    raw["distill"]["epochz"] = 3
    with pytest.raises(ConfigError, match=r"distill\.epochz: Extra inputs are not permitted"):
        resolve(raw)


def test_out_of_range_values_and_inconsistent_splits_are_refused():
    raw = raw_params()
    raw["prune"]["ratio"] = 1.5
    with pytest.raises(ConfigError, match=r"prune\.ratio"):
        resolve(raw)
    raw = raw_params()
    raw["ingest"]["split"] = {"train": 0.5, "val": 0.2, "test": 0.2}
    with pytest.raises(ConfigError, match=r"ingest\.split.*must be 1\.0"):
        resolve(raw)


def test_the_tiny_profile_overlays_without_editing_params_yaml():
    before = (REPO / "params.yaml").read_bytes()
    default, tiny = load_params(REPO / "params.yaml"), load_params(REPO / "params.yaml", profile="tiny")
    assert tiny.common.profile == "tiny"
    assert tiny.distill.epochs < default.distill.epochs
    assert tiny.data.image_size < default.data.image_size
    assert tiny.quantize.weight_type == default.quantize.weight_type  # untouched keys keep their value
    assert (REPO / "params.yaml").read_bytes() == before


def test_the_profile_can_be_chosen_in_params_as_dvc_exp_run_sets_it():
    raw = raw_params()
    raw["common"]["profile"] = "tiny"
    assert resolve(raw).distill.epochs == load_params(REPO / "params.yaml", profile="tiny").distill.epochs


def test_an_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"common\.profile: unknown profile 'huge'; allowed: default, real, tiny"):
        load_params(REPO / "params.yaml", profile="huge")
