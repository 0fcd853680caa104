"""A function with a dependency from requirements.txt (installed once per content hash by uv)."""

import humanize


def handler(event, context):
    size = int(event.get("bytes", 123456789)) if isinstance(event, dict) else 123456789
    return {"human": humanize.naturalsize(size), "version": humanize.__version__}
