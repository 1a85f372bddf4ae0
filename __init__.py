"""ComfyUI entry point of the comfy-kiwi node pack.

ComfyUI imports this file as a package from ``custom_nodes/``; the node classes live in ``nodes/``
and are imported relatively so that our ``nodes`` folder never shadows ComfyUI's own ``nodes`` module.

Imported as a plain module instead (``__package__`` empty) there is no package to import from: pytest
does that when the checkout folder is not a Python name (``comfy-kiwi``), because a folder holding an
``__init__.py`` is a package to it. The pack then exports no nodes rather than failing the import.

The nodes import the library as ``comfy_kiwi`` (plain static imports). This is the one place that makes it
importable: the installed library when there is one (``pip install -e .``), else the copy in this folder,
whose parent folder is then appended to ``sys.path`` (appended, so ComfyUI's own modules, e.g. ``nodes``,
keep precedence over same-named folders here).
"""

import importlib.util
import os
import sys

if __package__:
    if importlib.util.find_spec("comfy_kiwi") is None:
        sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
