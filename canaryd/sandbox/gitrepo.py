"""A local bare Git repo plus a working clone that pushes to it: the sandbox's config repo.

Real commits and real pushes (gitpython), so canaryd syncs it exactly as it would sync a hosted repo.
"""

from __future__ import annotations

from pathlib import Path

import git


class ConfigRepo:
    def __init__(self, root: Path, branch: str = "main") -> None:
        self.bare = root / "config.git"
        self.work = root / "config-work"
        self.branch = branch
        git.Repo.init(self.bare, bare=True, initial_branch=branch)
        self.repo = git.Repo.init(self.work, initial_branch=branch)
        with self.repo.config_writer() as cw:
            cw.set_value("user", "name", "canaryd sandbox")
            cw.set_value("user", "email", "sandbox@canaryd.invalid")
            cw.set_value("commit", "gpgsign", "false")
        self.repo.create_remote("origin", str(self.bare))

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: dict[str, str | None], message: str) -> str:
        """Write (or, with None, delete) files, commit and push; returns the new commit sha."""
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                if path.exists():
                    self.repo.index.remove([rel], working_tree=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            self.repo.index.add([rel])
        c = self.repo.index.commit(message)
        self.repo.remote("origin").push(f"{self.branch}:{self.branch}").raise_if_error()
        return c.hexsha

    def head(self) -> str:
        return self.repo.head.commit.hexsha
