"""Checkpoint safety and secrets: pickle weights need an explicit opt-in, secrets never reach MLflow."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from sweeplab.redaction import REDACTED, is_secret_key, redact, redact_override

TINY = ["width=64", "height=64", "steps=2", "strength=1.0", "tracking.log_step_images=false"]
PICKLE_NAMES = {"model.safetensors": "pytorch_model.bin", "diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin"}


@pytest.fixture
def pickled_toy_folder(toy_model, tmp_path) -> Path:
    """The toy model as a diffusers folder whose weights are pickle (.bin) files only."""
    from sweeplab.toy import toy_model_dir

    folder = tmp_path / "toy-pickled"
    shutil.copytree(toy_model_dir(), folder)
    for weights in folder.rglob("*.safetensors"):
        torch.save(load_file(weights), weights.with_name(PICKLE_NAMES[weights.name]))
        weights.unlink()
    return folder


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("sweeplab: error:")]


def test_pickle_checkpoint_is_refused_with_the_opt_in_named(sweeplab_cli, tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "weights.ckpt")
    done = sweeplab_cli("model.path=weights.ckpt", *TINY)
    assert done.returncode != 0
    assert error_lines(done.stderr) == [
        "sweeplab: error: model.path: 'weights.ckpt' is a pickle checkpoint, which can run code when loaded; "
        "use .safetensors, or set model.allow_pickle=true if you trust the file"
    ]
    assert "Traceback" not in done.stderr


def test_pickle_weights_load_only_with_allow_pickle_and_a_warning(sweeplab_cli, pickled_toy_folder):
    refused = sweeplab_cli(f"model.path={pickled_toy_folder}", *TINY)
    assert refused.returncode != 0
    (line,) = error_lines(refused.stderr)
    assert "holds pickle weights" in line and "model.allow_pickle=true" in line

    allowed = sweeplab_cli(f"model.path={pickled_toy_folder}", "model.allow_pickle=true", *TINY)
    assert allowed.returncode == 0, allowed.stderr
    assert "loading it because model.allow_pickle=true" in allowed.stdout + allowed.stderr


@pytest.mark.parametrize("key", ["hf_token", "api_key", "apiKey", "db_password", "client_secret", "model.token",
                                 "AWS_SECRET_ACCESS_KEY", "accessToken", "passphrase"])
def test_secret_looking_keys_are_secret(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["config_hash", "tokenizer", "max_tokens", "token_merging_ratio", "keyframes",
                                 "keys", "prompt", "monkey"])
def test_ordinary_keys_are_not_secret(key):
    assert not is_secret_key(key)


def test_redaction_masks_values_overrides_and_url_passwords():
    config = {"model": {"token": "hf_abc", "tokenizer": "clip"}, "uris": ["postgresql://mlflow:pw@db/mlflow"]}
    assert redact(config) == {"model": {"token": REDACTED, "tokenizer": "clip"},
                              "uris": [f"postgresql://mlflow:{REDACTED}@db/mlflow"]}
    assert redact_override("model.token=hf_abc") == f"model.token={REDACTED}"
    assert redact_override("prompt=a key to the city") == "prompt=a key to the city"


def test_a_token_on_the_command_line_never_reaches_mlflow(sweeplab_cli, tmp_path):
    done = sweeplab_cli("-m", "model.token=hf_do_not_log_me", *TINY)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweeplab").experiment_id])
    assert len(runs) == 2  # the sweep's parent and its one trial
    for run in runs:
        logged = " ".join([*run.data.params.values(), *run.data.tags.values()])
        assert "hf_do_not_log_me" not in logged
        assert f"model.token={REDACTED}" in run.data.tags["sweeplab.overrides"]
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    config = Path(client.download_artifacts(child.info.run_id, "config.yaml", str(tmp_path))).read_text()
    assert "hf_do_not_log_me" not in config and f"token: '{REDACTED}'" in config


@pytest.mark.parametrize("prompt", ["a red circle", "yes", "1.0", "null", "1_000", "ünïcode 🦊", "two\nlines",
                                    "colon: here", "# not a comment", "'quoted'", " padded ", "~"])
def test_a_trials_config_yaml_is_the_text_omegaconf_writes(compose_config, prompt):
    import yaml
    from omegaconf import OmegaConf

    from sweeplab.tracking import config_yaml

    config = OmegaConf.to_container(compose_config(), resolve=True)
    config["prompt"] = config["negative_prompt"] = prompt
    assert config_yaml(config) == OmegaConf.to_yaml(config)
    assert yaml.safe_load(config_yaml(config)) == config
