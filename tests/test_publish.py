"""What an upload would send, repository naming and offline detection; never the network."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from apex_gui.core.hub import publish
from apex_gui.core.hub.publish import (
    HF_MAX_FILE_BYTES, check_online, repo_name_for, upload, upload_plan, validate_repo_id,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt in these tests fails as on a machine without network."""
    def refuse(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_repo_name_and_validation() -> None:
    assert repo_name_for("Qwen3.5-35B-A3B") == "Qwen3.5-35B-A3B-APEX-GGUF"
    assert repo_name_for("APEX tiny qwen2moe") == "APEX-tiny-qwen2moe-APEX-GGUF"
    assert validate_repo_id(" alice/Model-APEX-GGUF ") == "alice/Model-APEX-GGUF"
    for bad in ("no-slash", "a/b/c", "alice/bad--name", "alice/ends-", "alice/sp ace", "/x"):
        with pytest.raises(ValueError):
            validate_repo_id(bad)


def test_upload_plan_lists_ggufs_under_repo_names_recipes_then_readme(tmp_path: Path) -> None:
    quality = tmp_path / "qwen-APEX-quality.gguf"
    quality.write_bytes(b"q" * 100)
    mmproj = tmp_path / "mmproj.gguf"
    mmproj.write_bytes(b"m" * 10)
    recipe = tmp_path / "quality.txt"
    recipe.write_text("blk.0.ffn_up_exps=Q6_K\n")
    plan = upload_plan("alice/Qwen-APEX-GGUF",
                       [(quality, "Qwen-APEX-Quality.gguf"), (mmproj, "mmproj-F16.gguf")],
                       readme="# card\n",
                       extras={"recipes/Qwen-APEX-Quality.tensor-types.txt": recipe})
    assert plan.ready, plan.problems
    assert plan.paths_in_repo() == ["Qwen-APEX-Quality.gguf", "mmproj-F16.gguf",
                                    "recipes/Qwen-APEX-Quality.tensor-types.txt", "README.md"]
    assert plan.items[0].local_path == quality and plan.items[0].size_bytes == 100
    assert plan.items[-1].content == b"# card\n"
    assert plan.total_bytes == 100 + 10 + recipe.stat().st_size + 7


def test_upload_plan_sends_every_shard_of_a_split_model(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        (tmp_path / f"big-APEX-quality-0000{i}-of-00003.gguf").write_bytes(b"s" * i)
    plan = upload_plan("alice/Big-APEX-GGUF",
                       [(tmp_path / "big-APEX-quality-00002-of-00003.gguf",
                         "Big-APEX-Quality.gguf")])
    assert plan.ready
    assert plan.paths_in_repo() == [f"Big-APEX-Quality-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def test_upload_plan_problems_missing_duplicate_too_big_bad_repo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = tmp_path / "a.gguf"
    a.write_bytes(b"a")
    plan = upload_plan("not a repo", [(tmp_path / "gone.gguf", "X.gguf"), (a, "A.gguf"),
                                      (a, "A.gguf")])
    text = " | ".join(plan.problems)
    assert not plan.ready
    assert "gone.gguf does not exist" in text
    assert "two files would be uploaded as A.gguf" in text
    assert "not USER/REPO" in text

    real_stat = Path.stat

    def huge(self: Path, *args, **kwargs):
        result = real_stat(self, *args, **kwargs)
        if self.name == "a.gguf":
            class Big:
                st_size = HF_MAX_FILE_BYTES + 1
            return Big()
        return result

    monkeypatch.setattr(Path, "stat", huge)
    plan = upload_plan("alice/A-APEX-GGUF", [(a, "A.gguf")])
    assert any("llama-gguf-split" in p for p in plan.problems)


def test_upload_refuses_a_plan_with_problems_before_touching_the_hub(tmp_path: Path) -> None:
    plan = upload_plan("alice/A-APEX-GGUF", [])
    assert "no GGUF file chosen" in plan.problems[0]
    with pytest.raises(publish.PublishError, match="no GGUF file chosen"):
        upload(plan)


def test_check_online_reports_offline_at_once() -> None:
    started = time.monotonic()
    status = check_online(timeout=2.0)
    assert not status.online
    assert "cannot be resolved" in status.message
    assert time.monotonic() - started < 1.0


def test_check_online_respects_hf_hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status = check_online()
    assert not status.online and "HF_HUB_OFFLINE" in status.message


def test_hub_account_without_login_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(publish.PublishError, match="hf auth login"):
        publish.hub_account()


def test_upload_sends_items_in_order_with_progress(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a stand-in HfApi: the order, the bytes read and the progress reported."""
    import huggingface_hub

    sent: list[tuple[str, bytes]] = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, **kwargs):
            assert kwargs["exist_ok"] is True
            return f"https://huggingface.co/{repo_id}"

        def upload_file(self, *, path_or_fileobj, path_in_repo, **kwargs):
            data = path_or_fileobj if isinstance(path_or_fileobj, bytes) else \
                b"".join(iter(lambda: path_or_fileobj.read(7), b""))
            sent.append((path_in_repo, data))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    gguf = tmp_path / "q.gguf"
    gguf.write_bytes(b"0123456789" * 5)
    plan = upload_plan("alice/Q-APEX-GGUF", [(gguf, "Q-APEX-Mini.gguf")], readme="card")
    reports: list[tuple[int, int, str]] = []
    url = upload(plan, progress=lambda d, t, w: reports.append((d, t, w)))
    assert url == "https://huggingface.co/alice/Q-APEX-GGUF"
    assert sent == [("Q-APEX-Mini.gguf", b"0123456789" * 5), ("README.md", b"card")]
    assert reports[-1] == (54, 54, "done")
    assert all(a[0] <= b[0] for a, b in zip(reports, reports[1:]))  # never goes backwards
    assert any(0 < d < 50 for d, _, _ in reports)  # progress inside the big file

    with pytest.raises(publish.UploadCancelled):
        upload(plan, should_stop=lambda: True)


def test_check_online_does_not_wait_for_a_dead_name_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(10)
        raise socket.gaierror(-3, "late")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    started = time.monotonic()
    try:
        status = check_online(timeout=0.3)
    finally:
        release.set()
    assert not status.online and "did not answer" in status.message
    assert time.monotonic() - started < 2.0
