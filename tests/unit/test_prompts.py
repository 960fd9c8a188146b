"""The prompt registry: layout, resolution and A/B splits, variables, the lock, and `llm-serve prompts`."""

from __future__ import annotations

import pickle
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from llm_serve.cli import main
from llm_serve.prompts import PromptError, PromptNotFound, PromptRegistry, PromptVariablesError, PromptVersion
from llm_serve.prompts.registry import read_lock, write_lock

PROMPTS = Path(__file__).resolve().parents[2] / "configs" / "prompts"


@pytest.fixture(scope="module")
def registry() -> PromptRegistry:
    return PromptRegistry.load(PROMPTS)


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(PROMPTS, tmp_path / "prompts"))


def test_bundled_registry_loads(registry: PromptRegistry) -> None:
    assert registry.names() == ["rag-grounded", "support-answer", "ticket-triage"]
    assert registry.versions("support-answer") == ["1", "2"]
    assert registry.aliases("support-answer") == {
        "production": {"1": 1.0},
        "staging": {"2": 1.0},
        "experiment": {"1": 0.5, "2": 0.5},
    }
    triage = registry.get("ticket-triage", "1")
    assert triage.output_schema is not None and triage.output_schema["required"] == ["category", "urgent"]
    assert set(read_lock(PROMPTS)) == set(registry.lock_entries()), "prompts.lock covers every bundled version"
    assert read_lock(PROMPTS) == registry.lock_entries()


def test_resolution_order(registry: PromptRegistry) -> None:
    assert registry.resolve("support-answer", version="2").prompt.version == "2"
    assert registry.resolve("support-answer", version="2").alias is None
    staging = registry.resolve("support-answer", alias="staging")
    assert (staging.prompt.version, staging.alias) == ("2", "staging")
    default = registry.resolve("support-answer")
    assert (default.prompt.version, default.alias) == ("1", "production")
    assert registry.resolve("ticket-triage").prompt.version == "1"  # no aliases: the highest version
    assert registry.resolve_ref("support-answer@staging").ref == staging.ref
    assert registry.resolve_ref("support-answer@1").ref.startswith("support-answer@1+")


def test_highest_version_is_natural_order(tmp_path: Path) -> None:
    for version in ("2", "10", "9"):
        (tmp_path / "p").mkdir(exist_ok=True)
        (tmp_path / "p" / f"{version}.yaml").write_text(f"name: p\nversion: {version}\ntemplate: v{version}\n")
    assert PromptRegistry.load(tmp_path).resolve("p").prompt.render() == "v10"


def test_unknown_name_version_alias_list_what_exists(registry: PromptRegistry) -> None:
    with pytest.raises(PromptNotFound, match=r"'nope'.*rag-grounded, support-answer, ticket-triage") as info:
        registry.resolve("nope")
    assert info.value.kind == "prompt" and "support-answer" in info.value.available
    with pytest.raises(PromptNotFound, match=r"no version '7' \(versions: 1, 2\)"):
        registry.resolve("support-answer", version="7")
    with pytest.raises(PromptNotFound, match=r"no alias 'canary'.*experiment, production, staging"):
        registry.resolve("support-answer", alias="canary")
    with pytest.raises(PromptNotFound, match=r"no alias 'canary'.*no aliases"):
        registry.resolve("ticket-triage", alias="canary")


def test_weighted_alias_splits_by_weight(registry: PromptRegistry, prompts_dir: Path) -> None:
    random.seed(1234)
    draws = Counter(registry.resolve("support-answer", alias="experiment").prompt.version for _ in range(20_000))
    assert abs(draws["1"] / 20_000 - 0.5) <= 0.02

    (prompts_dir / "support-answer" / "aliases.yaml").write_text('experiment: {"1": 4, "2": 1}\n')
    uneven = PromptRegistry.load(prompts_dir)
    random.seed(99)
    draws = Counter(uneven.resolve("support-answer", alias="experiment").prompt.version for _ in range(20_000))
    assert abs(draws["1"] / 20_000 - 0.8) <= 0.02


def test_sticky_keys_stay_on_one_arm_and_split_evenly(registry: PromptRegistry) -> None:
    def arm(key: str) -> str:
        return registry.resolve("support-answer", alias="experiment", sticky_key=key).prompt.version

    assert all(len({arm(f"user-{i}") for _ in range(5)}) == 1 for i in range(50))
    split = Counter(arm(f"user-{i}") for i in range(2_000))
    assert abs(split["1"] / 2_000 - 0.5) <= 0.05


def test_aliases_are_validated(prompts_dir: Path) -> None:
    aliases = prompts_dir / "support-answer" / "aliases.yaml"
    aliases.write_text('production: "3"\n')
    with pytest.raises(PromptError, match=r"aliases.yaml: alias 'production' points to version '3'"):
        PromptRegistry.load(prompts_dir)
    aliases.write_text('ab: {"1": 1, "2": 0}\n')
    with pytest.raises(PromptError, match="positive"):
        PromptRegistry.load(prompts_dir)
    aliases.write_text('ab: {"1": 3, "2": 1}\n')
    assert PromptRegistry.load(prompts_dir).aliases("support-answer") == {"ab": {"1": 0.75, "2": 0.25}}


def test_variables_every_problem_is_named(registry: PromptRegistry) -> None:
    prompt = registry.get("support-answer", "1")
    with pytest.raises(PromptVariablesError) as info:
        prompt.validate_variables({"tone": "rude", "mood": "grumpy"})
    message = str(info.value)
    assert "prompt.variables.question: missing" in message
    assert "prompt.variables.mood: unexpected" in message
    assert "prompt.variables.tone: 'rude' is not one of" in message
    assert info.value.param == "prompt.variables.mood"
    with pytest.raises(PromptVariablesError, match=r"prompt\.variables\.question: 42 is not of type 'string'") as info:
        prompt.render_messages({"question": 42})
    assert info.value.param == "prompt.variables.question"
    copied = pickle.loads(pickle.dumps(info.value))
    assert copied.param == info.value.param and str(copied) == str(info.value)


def test_defaults_and_rendered_messages(registry: PromptRegistry) -> None:
    prompt = registry.get("support-answer", "2")
    assert prompt.validate_variables({"question": "Hi"}) == {"question": "Hi", "tone": "friendly"}
    messages = prompt.render_messages({"question": "How do I reset the filter counter?"})
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Nimbus Labs" in messages[0]["content"] and "friendly" in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "How do I reset the filter counter?"}
    formal = prompt.render_messages({"question": "q", "tone": "formal"})[0]["content"]
    assert "formally" in formal and "friendly" not in formal
    text = PromptVersion("t", "1", "Hello {{ who }}").render_messages({"who": "Ada"})
    assert text == [{"role": "user", "content": "Hello Ada"}]


def test_template_errors_are_prompt_errors() -> None:
    broken = PromptVersion("t", "1", "{{ 1 / 0 }}")
    with pytest.raises(PromptError, match="t@1"):
        broken.render()
    with pytest.raises(PromptError, match="undefined"):
        PromptVersion("t", "1", "{{ nobody }}").render_messages({})
    with pytest.raises(PromptError, match="does not parse"):
        PromptVersion("t", "1", messages=({"role": "user", "content": "{% if %}"},))
    with pytest.raises(PromptError, match="messages"):
        PromptVersion("t", "1", messages=({"role": "user", "content": "x"},)).render()


def test_rag_prompt_keeps_working_with_its_schema(registry: PromptRegistry) -> None:
    rag = registry.resolve("rag-grounded").prompt
    text = rag.render(chunks=[{"text": "Filters last 90 days.", "source": "a.md", "page": -1}])
    assert "[1] Filters last 90 days." in text
    with pytest.raises(PromptVariablesError, match=r"prompt\.variables\.chunks: missing"):
        rag.render()
    assert PromptVersion.load(PROMPTS / "rag-grounded" / "1.yaml") == rag


def test_file_must_match_its_place(prompts_dir: Path) -> None:
    (prompts_dir / "support-answer" / "3.yaml").write_text("name: support-answer\nversion: 4\ntemplate: x\n")
    with pytest.raises(PromptError, match=r"3\.yaml.*differs from the file name"):
        PromptRegistry.load(prompts_dir)


def test_shipping_to_replicas_keeps_everything(registry: PromptRegistry) -> None:
    copy = PromptRegistry.from_dict(pickle.loads(pickle.dumps(registry.to_dict())))
    assert copy.lock_entries() == registry.lock_entries()
    assert copy.aliases("support-answer") == registry.aliases("support-answer")
    prompt = registry.get("ticket-triage", "1")
    assert PromptVersion.from_dict(prompt.to_dict()) == prompt == pickle.loads(pickle.dumps(prompt))


def test_lock_refuses_an_edited_version(prompts_dir: Path) -> None:
    version = prompts_dir / "support-answer" / "1.yaml"
    version.write_text(version.read_text().replace("keep it short", "keep it very short"))
    with pytest.raises(PromptError, match=r"support-answer/1\.yaml.*add a new version"):
        PromptRegistry.load(prompts_dir)
    with pytest.raises(PromptError, match="add a new version"):
        write_lock(prompts_dir)
    # Rewording the description is not a content change.
    other = prompts_dir / "support-answer" / "2.yaml"
    other.write_text(other.read_text().replace("description: Answer", "description: Answers"))
    version.write_text((PROMPTS / "support-answer" / "1.yaml").read_text())
    assert PromptRegistry.load(prompts_dir).get("support-answer", "2").description.startswith("Answers")


def test_new_versions_load_unlocked_then_lock(prompts_dir: Path) -> None:
    new = prompts_dir / "ticket-triage" / "2.yaml"
    new.write_text((prompts_dir / "ticket-triage" / "1.yaml").read_text().replace("version: 1", "version: 2"))
    assert PromptRegistry.load(prompts_dir).versions("ticket-triage") == ["1", "2"]
    _, added = write_lock(prompts_dir)
    assert added == ["ticket-triage@2"] and "ticket-triage@2" in read_lock(prompts_dir)


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prompts", "list", "--dir", str(PROMPTS)]) == 0
    out = capsys.readouterr().out
    assert "support-answer" in out and "1, 2" in out and "experiment={1: 50%, 2: 50%}" in out
    assert "production=1" in out and "ticket-triage" in out

    assert main(["prompts", "show", "ticket-triage@1", "--dir", str(PROMPTS)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ref: ticket-triage@1+") and "output_schema:" in out and "{{ ticket }}" in out

    assert main(["prompts", "show", "support-answer@experiment", "--dir", str(PROMPTS)]) == 0
    out = capsys.readouterr().out
    assert "splits between" in out and "support-answer@1+" in out and "support-answer@2+" in out


def test_cli_diff(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prompts", "diff", "support-answer@production", "support-answer@2", "--dir", str(PROMPTS)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("--- support-answer@1\n+++ support-answer@2\n")
    assert "-version: 1" in out and "+version: 2" in out and "+      When the answer involves steps" in out


def test_cli_bad_ref_and_edited_lock_exit_1(prompts_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prompts", "show", "support-answer@canary", "--dir", str(prompts_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "canary" in err and "versions: 1, 2" in err and err.count("\n") == 1
    assert main(["prompts", "diff", "support-answer@1", "nope@1", "--dir", str(prompts_dir)]) == 1
    assert "unknown prompt 'nope'" in capsys.readouterr().err

    assert main(["prompts", "lock", "--dir", str(prompts_dir)]) == 0
    assert "up to date" in capsys.readouterr().out
    version = prompts_dir / "rag-grounded" / "1.yaml"
    version.write_text(version.read_text().replace("exact facts", "the exact facts"))
    assert main(["prompts", "lock", "--dir", str(prompts_dir)]) == 1
    assert "add a new version" in capsys.readouterr().err
