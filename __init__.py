"""ComfyUI entry point of the comfy-kiwi node pack.

ComfyUI imports this file as a package from ``custom_nodes/``; the node classes live in ``nodes/``
and are imported relatively so that our ``nodes`` folder never shadows ComfyUI's own ``nodes`` module.

The nodes import the library as ``comfy_kiwi`` (plain static imports). This is the one place that makes it
importable: the installed library when there is one (``pip install -e .``), else the copy in this folder,
whose parent folder is then appended to ``sys.path`` (appended, so ComfyUI's own modules, e.g. ``nodes``,
keep precedence over same-named folders here).
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("comfy_kiwi") is None:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402  (needs comfy_kiwi importable)

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
