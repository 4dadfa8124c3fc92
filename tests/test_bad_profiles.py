"""One bad user profile is skipped with one line naming the file and the key; every command
keeps working with the built-in profiles and the user's good ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apex_gui.cli import main
from apex_gui.core.plan.profiles import builtin_profiles, profile_to_toml, user_profiles

BAD_PROFILES = {
    "bands.toml": ("routed_experts.bands", lambda good: good.replace(
        "[routed_experts]\nbands = [", "[routed_experts]\nbands = 5\nold = [")),
    "broken.toml": ("not valid TOML", lambda good: good + "\n[[[ nonsense\n"),
    "latin1.toml": ("not UTF-8", None),
    "flag.toml": ("uses_imatrix", lambda good: good.replace("uses_imatrix = false",
                                                            'uses_imatrix = "no"')),
}


@pytest.fixture
def profiles_folder() -> Path:
    folder = Path(os.environ["APEX_STUDIO_CONFIG_DIR"]) / "profiles"
    folder.mkdir(parents=True)
    base = profile_to_toml(builtin_profiles()["quality"])
    for name, (_, make) in BAD_PROFILES.items():
        key = name.removesuffix(".toml")
        text = base.replace('key = "quality"', f'key = "my-{key}"')
        if make is None:
            (folder / name).write_bytes(text.replace("description = ", "description = \"\xe9\" #")
                                        .encode("latin-1"))
        else:
            (folder / name).write_text(make(text))
    good = base.replace('key = "quality"', 'key = "mine"').replace('label = "Quality"',
                                                                   'label = "Mine"')
    (folder / "mine.toml").write_text(good)
    return folder


def test_each_bad_profile_is_one_problem_naming_file_and_key(profiles_folder: Path) -> None:
    profiles, problems = user_profiles()
    assert list(profiles) == ["mine"]
    assert len(problems) == len(BAD_PROFILES)
    for name, (words, _) in BAD_PROFILES.items():
        found = [p for p in problems if p.startswith(str(profiles_folder / name))]
        assert len(found) == 1 and words in found[0], problems


@pytest.mark.parametrize("args", [
    ["plan", "{model}", "--profile", "quality"], ["plan", "{model}", "--profile", "mine"],
    ["estimate", "{model}", "--profile", "compact"], ["estimate", "{model}", "--all",
                                                      "--no-baselines"]])
def test_commands_work_and_warn_once_per_bad_file(args: list[str], profiles_folder: Path,
                                                  tiny_qwen3moe: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main([a.format(model=tiny_qwen3moe) for a in args])
    err = capsys.readouterr().err
    assert code == 0, err
    # Only the warnings: `plan` without -o also prints its size and command on stderr.
    lines = [line for line in err.splitlines() if line.startswith("apex-studio ")]
    assert len(lines) == len(BAD_PROFILES) and "Traceback" not in err
    for name in BAD_PROFILES:
        assert sum(str(profiles_folder / name) in line for line in lines) == 1, err
    assert all(line.startswith(f"apex-studio {args[0]}: warning: skipped profile ")
               for line in lines)


def test_asking_for_a_skipped_profile_says_why(profiles_folder: Path, tiny_qwen3moe: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", str(tiny_qwen3moe), "--profile", "my-broken"])
    err = capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert "unknown profile 'my-broken'" in last and "broken.toml: not valid TOML" in last
