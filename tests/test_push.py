"""``tandem push``: RUN/final (model card included) goes to a repo through huggingface_hub, against a fake Hub on
127.0.0.1 (never the real Hub); errors are one line."""

from __future__ import annotations

import json

import pytest
from helpers_fakehub import TOKEN, fake_hub
from typer.testing import CliRunner

from tandem.cli.push_cmd import app
from tandem.pipelines.push import PushError, push


@pytest.fixture(autouse=True)
def _no_real_hub(monkeypatch, tmp_path):
    for k in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no cached login of the machine
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    from tandem.models import apply_lora, load_policy, save_model
    from tandem.models.card import card_info

    run = tmp_path_factory.mktemp("run")
    model, tok = load_policy(str(tiny_model_dir))
    save_model(apply_lora(model, r=4, alpha=8), tok, run / "final",
               card=card_info({"model": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                               "schedule": {"method": "hbat"}}, {"final_val": {"sft/loss": 1.5}}))
    return run


@pytest.fixture(scope="module")
def reward_lora_run(tmp_path_factory, tiny_model_dir):
    from tandem.models import apply_lora, load_reward_model, save_model

    run = tmp_path_factory.mktemp("rm-run")
    rm, tok = load_reward_model(str(tiny_model_dir))
    save_model(apply_lora(rm, r=4, alpha=8, task_type="SEQ_CLS"), tok, run / "final")
    return run


def test_push_uploads_final_with_card_in_one_commit(lora_run):
    with fake_hub() as hub:
        res = push(lora_run, "me/tiny-hbat", private=True, token=TOKEN, endpoint=hub.url)
        repo = hub.repos["me/tiny-hbat"]
        assert repo["private"] is True
        files = repo["branches"]["main"]
        local = {p.name: p.read_bytes() for p in (lora_run / "final").iterdir() if p.is_file()}
        assert files == local  # byte for byte, README.md model card included
        assert b"base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in files["README.md"]
        assert hub.cards and "library_name: peft" in hub.cards[0]  # the card's metadata went to validation
        assert [r for r in hub.requests if "/commit/" in r[1]] == [("POST", "/api/models/me/tiny-hbat/commit/main")]
    assert res.repo_id == "me/tiny-hbat" and res.revision == "main" and res.url.endswith("/me/tiny-hbat")
    assert not list(lora_run.glob(".push-*"))  # the staging copy is gone


def test_push_to_a_branch_twice_with_token_from_env(lora_run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with fake_hub() as hub:
        push(lora_run, "me/tiny", revision="v1", endpoint=hub.url)
        push(lora_run, "me/tiny", revision="v1", endpoint=hub.url)  # repo and branch exist: fine
        assert set(hub.repos["me/tiny"]["branches"]) == {"main", "v1"}
        assert "adapter_model.safetensors" in hub.repos["me/tiny"]["branches"]["v1"]
        assert hub.repos["me/tiny"]["branches"]["main"] == {}


def test_endpoint_from_hf_endpoint_env(lora_run, monkeypatch):
    with fake_hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        push(lora_run / "final", "me/from-env", token=TOKEN)  # a model dir works as well as its run dir
        assert "README.md" in hub.repos["me/from-env"]["branches"]["main"]


def test_reward_adapter_names_the_repo_as_its_base(reward_lora_run):
    local = json.loads((reward_lora_run / "final" / "adapter_config.json").read_text())
    assert local["base_model_name_or_path"] == str((reward_lora_run / "final").resolve())
    with fake_hub() as hub:
        push(reward_lora_run, "me/rm", token=TOKEN, endpoint=hub.url)
        pushed = json.loads(hub.repos["me/rm"]["branches"]["main"]["adapter_config.json"])
        assert "config.json" in hub.repos["me/rm"]["branches"]["main"]
    assert pushed["base_model_name_or_path"] == "me/rm"
    again = json.loads((reward_lora_run / "final" / "adapter_config.json").read_text())
    assert again == local  # the run's own file is untouched (hard-linked staging is not written through)


def test_errors_are_one_line(lora_run, tmp_path):
    with fake_hub() as hub:
        with pytest.raises(PushError, match=r"not authenticated \(HTTP 401\); pass --token, set HF_TOKEN"):
            push(lora_run, "me/x", token="hf_wrong", endpoint=hub.url)
        with pytest.raises(PushError, match="not authenticated"):
            push(lora_run, "me/x", endpoint=hub.url)  # no token anywhere
        (tmp_path / "empty-run").mkdir()
        with pytest.raises(PushError, match=r"no final/ model here \(has the run finished"):
            push(tmp_path / "empty-run", "me/x", token=TOKEN, endpoint=hub.url)
        with pytest.raises(PushError, match="not found"):
            push(tmp_path / "missing", "me/x", token=TOKEN, endpoint=hub.url)
        with pytest.raises(PushError, match="repo id 'me/x/y'"):
            push(lora_run, "me/x/y", token=TOKEN, endpoint=hub.url)
        assert hub.repos == {}
        closed = hub.url
    with pytest.raises(PushError, match=f"cannot reach {closed}"):
        push(lora_run, "me/x", token=TOKEN, endpoint=closed)


def test_cli_push_and_its_errors(lora_run):
    runner = CliRunner()
    with fake_hub() as hub:
        ok = runner.invoke(app, [str(lora_run), "me/cli", "--branch", "dev", "--token", TOKEN, "--endpoint", hub.url,
                                 "-m", "first"])
        assert ok.exit_code == 0, ok.output
        assert "pushed" in ok.output and "/me/cli" in ok.output and "branch dev" in ok.output
        assert "README.md" in hub.repos["me/cli"]["branches"]["dev"]
        bad = runner.invoke(app, [str(lora_run), "me/cli", "--token", "nope", "--endpoint", hub.url])
    assert bad.exit_code == 2
    assert bad.output.strip().startswith("error: push to") and len(bad.output.strip().splitlines()) == 1
    assert "Traceback" not in bad.output
