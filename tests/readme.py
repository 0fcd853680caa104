"""The README's snippets, for the tests that run them verbatim."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```$", re.S | re.M)


def section(title: str) -> str:
    """The README's section under ``## title``, up to the next ``## `` heading."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 4)
    return text[start:end if end != -1 else None]


def script(text: str) -> str:
    """One bash script: bash blocks as they are, python blocks fed to python on stdin."""
    parts = ["set -euo pipefail"]
    for lang, body in BLOCK.findall(text):
        parts.append(body if lang == "bash" else f"python - <<'SNIPPET'\n{body}SNIPPET\n")
    return "\n".join(parts)
