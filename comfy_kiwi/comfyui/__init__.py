"""Everything of the library that knows about ComfyUI, in one place.

- :mod:`.adapter`        the only module that talks to ComfyUI (progress, interrupts, memory, folder_paths),
                         a no-op outside it, so the command line and the trainer run without ComfyUI;
- :mod:`.model_folders`  finding models in ComfyUI's model folders (Kiwi parts, releases, method weights,
                         umT5, judge / reward / SAM folders) and saying clearly when a file is the wrong kind;
- :mod:`.model_cache`    loaded models reused between runs, reloaded when their files change;
- :mod:`.placement`      where weights wait between stages and moving them for one stage;
- :mod:`.latent`         Kiwi latents to and from ComfyUI's LATENT.

Nothing here imports ComfyUI; the submodules are imported by name (this file imports none of them).
"""
