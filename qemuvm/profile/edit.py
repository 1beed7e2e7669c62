"""`qemuvm edit NAME`: the saved profile in $EDITOR, kept only when the edit is valid."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from qemuvm.errors import OperationError, ProfileError
from qemuvm.profile.validate import load_and_validate


def edit_saved(profile: Path, name: str, editor: str | None = None) -> bool:
    """Edit `profile` (an instance's profile.yaml) through a private temporary copy beside it; replace it only
    with a valid edit (applies at the next start). True when it changed; an invalid edit raises ProfileError
    naming the saved file and keeps it as it was."""
    command = shlex.split(editor or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
    fd, tmp_name = tempfile.mkstemp(prefix=".edit-", suffix=".yaml", dir=profile.parent)
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        original = profile.read_text()
        tmp.write_text(original)
        if subprocess.call([*command, str(tmp)]) != 0:
            raise OperationError(f"the editor {command[0]} failed; {profile} is unchanged")
        edited = tmp.read_text()
        if edited == original:
            return False
        try:
            load_and_validate(str(tmp), (), name)
        except ProfileError as exc:
            shown = [line.replace(str(tmp), str(profile)) for line in exc.problems]
            raise ProfileError([*shown, f"{profile} is unchanged (the edit is invalid)"]) from None
        os.chmod(tmp, 0o600)
        os.replace(tmp, profile)
        return True
    finally:
        tmp.unlink(missing_ok=True)
