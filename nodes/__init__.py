"""ComfyUI node classes of comfy-kiwi: thin wrappers that validate inputs and call ``comfy_kiwi``."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
