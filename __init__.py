"""ComfyUI entry point of the comfy-kiwi node pack.

ComfyUI imports this file as a package from ``custom_nodes/``; the node classes live in ``nodes/``
and are imported relatively so that our ``nodes`` folder never shadows ComfyUI's own ``nodes`` module.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
