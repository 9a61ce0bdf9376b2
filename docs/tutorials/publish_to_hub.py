"""Publish to the Hugging Face Hub, against a local fake Hub: save, push, load back by repo id."""

import fnmatch
import os
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import huggingface_hub
import torch

import lipzoo
from lipzoo.hub import push, save_pretrained

WORK = Path(os.environ.get("LIPZOO_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="lipzoo-tutorial-"))


# 0. A fake Hub in a local folder, so that this tutorial never touches the network. It replaces the
#    three huggingface_hub calls lipzoo.hub.push makes and the download lipzoo.load makes, as
#    tests/test_hub.py does. Drop this block to publish for real (log in first: `hf auth login`).
def fake_hub(root: Path) -> ExitStack:
    def create_repo(self, repo_id, **kwargs):
        (root / repo_id).mkdir(parents=True, exist_ok=True)

    def create_branch(self, repo_id, *, branch, **kwargs):
        (root / repo_id / branch).mkdir(parents=True, exist_ok=True)

    def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message="", allow_patterns=(), **kwargs):
        target = root / repo_id / (revision or "main")
        target.mkdir(parents=True, exist_ok=True)
        for path in Path(folder_path).iterdir():  # the files the patterns select, as the Hub client does
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in allow_patterns):
                shutil.copy2(path, target / path.name)
        oid = "0" * 40  # a real upload returns the commit's hash
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
                                          commit_message=commit_message, commit_description="", oid=oid)

    def snapshot_download(repo_id, *, revision=None, **kwargs):
        return str(root / repo_id / (revision or "main"))

    stack = ExitStack()
    for name, fake in [("create_repo", create_repo), ("create_branch", create_branch),
                       ("upload_folder", upload_folder)]:
        stack.enter_context(mock.patch.object(huggingface_hub.HfApi, name, fake))
    stack.enter_context(mock.patch.object(huggingface_hub, "snapshot_download", snapshot_download))
    return stack


with fake_hub(WORK / "fake-hub"):
    # 1. A checkpoint folder: model.safetensors + config.json + README.md (the model card). Here the
    #    shipped MNIST model, re-saved in its own storage precision (float16): the same bytes, so its
    #    measured numbers stay with it (numbers are kept only for the sha256 they were measured on).
    model = lipzoo.load("crm-mnist-4c3f")
    folder = save_pretrained(model, WORK / "my-mnist", storage_dtype="float16")
    print(sorted(p.name for p in folder.iterdir()))

    # 2. Push it. push() first checks that the folder loads (checksum, strict state dict) and
    #    re-renders the card from config.json, then uploads the checkpoint's files and nothing else.
    #    From a shell: lipzoo push my-mnist --repo-id me/my-mnist
    info = push(folder, "me/my-mnist", commit_message="First certified MNIST model")
    print(f"pushed: {info.commit_url}")

    # 3. Anyone can now load it by repo id (sha256-checked against its config.json).
    loaded = lipzoo.load("hf-hub:me/my-mnist")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    print(f"loaded back: {loaded.metadata.architecture}, sha256 {loaded.metadata.sha256[:12]}..., "
          f"clean accuracy on its card {loaded.metadata.results.clean:.4f}")

    # 4. A model object can push itself too (saved to a temporary folder, then pushed), here to a
    #    branch (revision) of the repo, created if needed.
    info = model.push_to_hub("me/my-mnist", revision="v2", storage_dtype="float16")
    print(f"pushed the model object: {info.commit_url}")
    print(f"revision v2 loads: {lipzoo.load('hf-hub:me/my-mnist', revision='v2').metadata.sha256[:12]}...")
